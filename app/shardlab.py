"""ShardLab's entry point: `streamlit run app/shardlab.py`. It checks the serving settings, lists the pages
and runs navigation.

The pages live in app/views/, not app/pages/: Streamlit treats a folder named `pages/` beside the entry
script as old-style automatic pages, and a first request for /runs would then skip this navigation.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repo root that holds engine/
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from streamlit import config  # noqa: E402

from app.serving import HOW_TO_START, serving_problems  # noqa: E402

# A local file: a Material or emoji page icon makes the browser fetch the favicon from an internet host.
FAVICON = ROOT / "assets" / "favicon.png"

st.set_page_config(page_title="ShardLab", page_icon=str(FAVICON), layout="wide")
problems = serving_problems(st.get_option, config.get_where_defined, os.environ)
if problems:
    st.error("ShardLab refuses to serve these pages: " + "; ".join(problems) + ".\n\n" + HOW_TO_START,
             icon=":material/block:")
    st.stop()
st.navigation(
    [
        st.Page("views/train.py", title="Train", icon=":material/rocket_launch:", url_path="train", default=True),
        st.Page("views/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        st.Page("views/whatif.py", title="What-if", icon=":material/calculate:", url_path="whatif"),
        st.Page("views/learn.py", title="Learn", icon=":material/school:", url_path="learn"),
    ]
).run()
