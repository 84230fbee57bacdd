"""ShardLab's entry point: `streamlit run app/shardlab.py`. It only lists the pages and runs navigation.

The pages live in app/views/, not app/pages/: Streamlit treats a folder named `pages/` beside the entry
script as old-style automatic pages, and a first request for /runs would then skip this navigation.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repo root that holds engine/
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="ShardLab", page_icon="🧩", layout="wide")  # an emoji: no icon fetched from a font host
st.navigation(
    [
        st.Page("views/train.py", title="Train", icon=":material/rocket_launch:", url_path="train", default=True),
        st.Page("views/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
        st.Page("views/whatif.py", title="What-if", icon=":material/calculate:", url_path="whatif"),
        st.Page("views/learn.py", title="Learn", icon=":material/school:", url_path="learn"),
    ]
).run()
