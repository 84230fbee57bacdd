"""ShardLab's entry point: `streamlit run app/shardlab.py`. It only lists the pages and runs navigation."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repo root that holds engine/
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

PAGES = Path(__file__).resolve().parent / "pages"


def whatif_pending() -> None:
    st.title("What-if")
    st.info("The memory and communication estimator is not installed in this checkout yet (app/pages/whatif.py).")


st.set_page_config(page_title="ShardLab", page_icon=":material/grid_view:", layout="wide")
whatif = (
    st.Page("pages/whatif.py", title="What-if", icon=":material/calculate:", url_path="whatif")
    if (PAGES / "whatif.py").is_file()
    else st.Page(whatif_pending, title="What-if", icon=":material/calculate:", url_path="whatif")
)
st.navigation(
    [
        st.Page("pages/train.py", title="Train", icon=":material/rocket_launch:", url_path="train", default=True),
        st.Page("pages/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
        whatif,
        st.Page("pages/learn.py", title="Learn", icon=":material/school:", url_path="learn"),
    ]
).run()
