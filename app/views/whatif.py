"""What-if page: per-GPU memory for any model, ZeRO stage and GPU count, instantly; and a finished run's
prediction beside what each of its ranks measured. Thin layout: numbers from engine.estimate, charts
from app.whatif_charts. Torch is imported only for ShardLab's own models (meta device, nothing allocated)."""

import math

import pandas as pd
import streamlit as st

from app import whatif_charts as charts
from engine import estimate as est
from engine import runstore
from engine.architectures import ARCHITECTURES, NOMINAL_MODELS, param_count, parse_hf_config
from engine.registry import DATASETS, MODELS

KEYS = {  # every widget's session-state key, named once
    "source": "whatif_source",
    "arch": "whatif_arch",
    "model": "whatif_model",
    "size": "whatif_size",
    "dataset": "whatif_dataset",
    "params": "whatif_params",
    "config": "whatif_config",
    "ranks": "whatif_ranks",
    "precision": "whatif_precision",
    "engine_precision": "whatif_engine_precision",
    "optimizer": "whatif_optimizer",
    "offload": "whatif_offload",
    "gpu": "whatif_gpu",
    "gpu_custom": "whatif_gpu_custom_gib",
    "units": "whatif_units",
    "batch": "whatif_batch",
    "seq": "whatif_seq",
    "recompute": "whatif_recompute",
    "act_bytes": "whatif_activation_bytes",
    "dropout": "whatif_dropout",
    "context": "whatif_context_gib",
    "comm": "whatif_comm_buffers_mib",
    "run": "whatif_run",
    "arch_seen": "whatif_activation_defaults_for",  # not a widget: the architecture the defaults above belong to
}
SOURCES = ("Published architecture", "ShardLab model (exact)", "Parameter count", "Hugging Face config.json")
CUSTOM_GPU = "Custom capacity"
UNITS = ("GiB (2^30 bytes)", "GB (1e9 bytes, the ZeRO paper's)")
MAX_ENGINE_RANKS = 1024  # engine mode lists every rank; beyond this use the formula


def architecture_label(name: str) -> str:
    if name in ARCHITECTURES:
        return ARCHITECTURES[name].name
    return f"ZeRO paper example, Ψ = {NOMINAL_MODELS[name] / 1e9:g}B"


st.title("What-if: memory per GPU")
st.caption(
    "Model states as the ZeRO paper counts them (Rajbhandari et al. 2020), activations as Korthikanti et al. "
    "2022 count them, for any model, stage and number of GPUs. Pick one of ShardLab's own models for an exact, "
    "per-rank prediction of what a run will measure."
)

# ------------------------------------------------------------------------------ inputs (left)
arch, shapes, num_params, model_label, problem = None, None, None, "", None
with st.sidebar:
    st.header("Model")
    source = st.radio("Model from", SOURCES, key=KEYS["source"])
    try:
        if source == SOURCES[0]:
            name = st.selectbox("Architecture", [*ARCHITECTURES, *NOMINAL_MODELS], key=KEYS["arch"], format_func=architecture_label)
            if name in ARCHITECTURES:
                arch = ARCHITECTURES[name]
                num_params, model_label = param_count(arch), f"{arch.name} ({arch.source})"
            else:
                num_params, model_label = NOMINAL_MODELS[name], architecture_label(name)
        elif source == SOURCES[1]:
            model = st.selectbox("ShardLab model", list(MODELS), key=KEYS["model"])
            size = st.selectbox("Size", list(MODELS[model].presets), key=KEYS["size"])
            datasets = [d for d, info in DATASETS.items() if info.kind == MODELS[model].input_kind]
            dataset = st.selectbox("Dataset (sizes the first and last layers)", datasets, key=KEYS["dataset"])
            shapes = est.engine_param_shapes(model, size, dataset)
            num_params = sum(math.prod(shape) for _, shape in shapes)
            arch = est.registry_transformer(model, size, dataset)
            model_label = f"ShardLab {model}/{size} on {dataset}"
        elif source == SOURCES[2]:
            text = st.text_input("Parameters Ψ (e.g. 124M, 7.5B, 1T)", value="7.5B", key=KEYS["params"])
            num_params, model_label = est.parse_count(text), f"Ψ = {text.strip()}"
        else:
            upload = st.file_uploader(
                "config.json (read as data only)", type=["json"], key=KEYS["config"], max_upload_size=1,
                help="A Hugging Face config.json of a gpt2, llama or mistral model; nothing in it is executed.",
            )
            if upload is not None:
                arch = parse_hf_config(upload.getvalue(), name=upload.name)
                num_params, model_label = param_count(arch), f"{upload.name} ({arch.family} layout)"
    except ValueError as err:  # EstimateError and ArchitectureError: messages written for the reader
        problem = str(err)

    st.header("Training")
    engine_mode = shapes is not None
    ranks = st.number_input("GPUs (data-parallel ranks N)", 1, 1_000_000, 8, step=1, key=KEYS["ranks"])
    if engine_mode:
        precision = st.selectbox("Precision (the engine's)", est.ENGINE_PRECISIONS, key=KEYS["engine_precision"])
    else:
        precision = st.selectbox(
            "Precision", list(est.PRECISIONS), index=list(est.PRECISIONS).index("bf16"), key=KEYS["precision"],
            format_func=lambda p: f"{p}: {est.PRECISIONS[p].label}",
        )
    optimizer = st.selectbox("Optimizer", list(est.OPTIMIZER_STATES), key=KEYS["optimizer"])
    offload = st.checkbox(
        "Offload optimizer state to CPU", key=KEYS["offload"], disabled=engine_mode,
        help="ZeRO-Offload: fp32 master weights and optimizer state live in host memory (shown separately).",
    )

    st.header("GPU")
    gpu_names = [*est.GPUS, CUSTOM_GPU]
    gpu = st.selectbox("GPU", gpu_names, index=gpu_names.index("NVIDIA A100 80 GB"), key=KEYS["gpu"])
    if gpu == CUSTOM_GPU:
        capacity_bytes = int(st.number_input("Capacity (GiB)", 0.1, 10_000.0, 80.0, key=KEYS["gpu_custom"]) * est.GIB)
    else:
        capacity_bytes = est.GPUS[gpu]
    decimal = st.radio("Units", UNITS, key=KEYS["units"]) == UNITS[1]

    with st.expander("Activations", expanded=arch is not None):
        if arch is None:
            st.caption("Activations need a transformer layout: pick an architecture, ShardLab's gpt or a config.json.")
            activation_bytes = 0
        else:
            if st.session_state.get(KEYS["arch_seen"]) != arch.name:
                # A new architecture brings its own defaults (its context, whether it used dropout).
                st.session_state[KEYS["arch_seen"]] = arch.name
                st.session_state[KEYS["seq"]] = min(arch.context, 2048)
                st.session_state[KEYS["dropout"]] = arch.dropout
            batch = st.number_input("Micro-batch per GPU (0 = leave out)", 0, 65_536, 1, key=KEYS["batch"])
            seq = st.number_input("Sequence length", 1, 1_048_576, key=KEYS["seq"])
            recompute = st.selectbox("Recomputation", est.RECOMPUTE, key=KEYS["recompute"])
            act_bytes = st.selectbox("Bytes per activation", (2, 4), key=KEYS["act_bytes"], format_func=lambda b: {2: "2 (bf16/fp16)", 4: "4 (fp32)"}[b])
            dropout = st.checkbox("Trained with dropout (1-byte masks)", key=KEYS["dropout"])
            activation_bytes = (
                est.estimate_activations(arch, int(batch), int(seq), recompute, int(act_bytes), dropout).total_bytes if batch else 0
            )
    with st.expander("Overheads"):
        context_gib = st.number_input(
            "Framework/CUDA context (GiB)", 0.0, 1000.0, 0.0, step=0.25, key=KEYS["context"],
            help="CUDA context, cuBLAS/cuDNN workspaces and the framework: typically 0.3-1 GiB per GPU.",
        )
        comm_mib = st.number_input(
            "Communication buffers (MiB)", 0.0, 1_000_000.0, 0.0, step=25.0, key=KEYS["comm"],
            help="DDP's gradient buckets (25 MiB each by default), FSDP's all-gather/reduce-scatter buffers.",
        )

if problem:
    st.error(problem, icon=":material/error:")
    st.stop()
if num_params is None:
    st.info("Upload a Hugging Face config.json in the sidebar to size its model.", icon=":material/upload_file:")
    st.stop()
ranks = int(ranks)
if engine_mode and ranks > MAX_ENGINE_RANKS:
    st.error(f"The exact per-rank mode lists every rank: at most {MAX_ENGINE_RANKS:,} GPUs (use a parameter count beyond that).")
    st.stop()

# ------------------------------------------------------------------------------ the estimate
try:
    overheads = est.Overheads(int(context_gib * est.GIB), int(comm_mib * est.MIB))
    scenario = est.Scenario(num_params, ranks, precision, optimizer, offload, activation_bytes, overheads, shapes)
    rows = est.stage_rows(scenario, capacity_bytes)
    terms = pd.DataFrame(est.stage_terms(scenario))
    top = max(ranks * 4, 1024 if not engine_mode else 64)
    ranks_list = [2**k for k in range(int(math.log2(min(top, MAX_ENGINE_RANKS if engine_mode else 2**20))) + 1)]
    curve = pd.DataFrame(est.ranks_curve(scenario, sorted(set(ranks_list) | {ranks})))
except ValueError as err:
    st.error(str(err), icon=":material/error:")
    st.stop()

divisor, unit = charts.display_unit(max(r["total_bytes"] for r in rows), decimal)
gpu_label = gpu if gpu != CUSTOM_GPU else f"custom {capacity_bytes / est.GIB:g} GiB"
st.markdown(
    f"**{model_label}**: Ψ = {num_params:,} parameters on **{ranks:,}** GPUs, {precision}, {optimizer}"
    + (" — exact engine mode (what ShardLab's worker will measure)" if engine_mode else "")
)
for column, row in zip(st.columns(4), rows):
    column.metric(
        row["stage"], f"{row['total_bytes'] / divisor:,.2f} {unit}",
        "fits" if row["fits"] else "does not fit", delta_color="normal" if row["fits"] else "inverse",
        delta_arrow="off", help=f"per GPU (the busiest rank) against {gpu_label}",
    )

left, right = st.columns(2)
left.altair_chart(charts.stage_bar_chart(terms, capacity_bytes, gpu_label, decimal), key="whatif_stage_chart")
right.altair_chart(charts.ranks_line_chart(curve, capacity_bytes, gpu_label, decimal), key="whatif_ranks_chart")

size = lambda b: b / divisor
table = pd.DataFrame(
    {
        "stage": r["stage"],
        f"parameters ({unit})": size(r["params_bytes"]),
        f"gradients ({unit})": size(r["grads_bytes"]),
        f"optimizer state ({unit})": size(r["optimizer_bytes"]),
        f"master weights ({unit})": size(r["master_bytes"]),
        f"activations ({unit})": size(r["activations_bytes"]),
        f"overheads ({unit})": size(r["context_bytes"] + r["comm_buffers_bytes"]),
        f"total per GPU ({unit})": size(r["total_bytes"]),
        "total bytes": r["total_bytes"],
        f"offloaded to CPU ({unit})": size(r["cpu_bytes"]),
        "fits": r["fits"],
        "fewest GPUs that fit": "never" if r["min_ranks_to_fit"] is None else f"{r['min_ranks_to_fit']:,}",
        f"largest model on {ranks:,} GPUs (Ψ)": r["max_params_to_fit"],
        "comm per step (elements)": r["comm_elements"],
        "comm per step (bytes)": r["comm_bytes"],
    }
    for r in rows
)
st.dataframe(table, hide_index=True, key="whatif_table", column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if f"({unit})" in c})
st.caption(
    f"{unit} = {'1e9' if decimal else '2^30'} bytes. Activations are not sharded by ZeRO: every GPU keeps the "
    "activations of its own micro-batch whatever the stage (only recomputation or tensor/sequence parallelism "
    "shrink them). Communication as the ZeRO paper counts it per GPU and step: 2Ψ for DDP, ZeRO-1 and ZeRO-2, "
    "3Ψ for ZeRO-3. 'Fewest GPUs' and 'largest model' keep activations and overheads fixed."
    + (" Engine mode: the bytes ShardLab's worker measures after the optimizer step, to the byte; ZeRO-1 splits "
       "whole parameters and FSDP2 pads dim 0, so ranks differ." if engine_mode else "")
)

# ------------------------------------------------------------------------------ predicted vs measured
st.subheader("Predicted vs measured")
root = runstore.runs_dir_default()
finished = [r for r in runstore.list_runs(root) if r["state"] in ("succeeded", "cancelled")]
if not finished:
    st.info("No finished runs yet: train one on the Train page, then compare it here.", icon=":material/info:")
    st.stop()


def run_label(run_id: str) -> str:
    spec = next(r["spec"] for r in finished if r["run_id"] == run_id)
    return f"{run_id} — {spec['model']}/{spec['size']}, {spec['strategy']}, {spec['nproc'] * spec.get('nnodes', 1)} ranks, {spec['precision']}"


run_id = st.selectbox("Finished run", [r["run_id"] for r in finished], key=KEYS["run"], format_func=run_label)
summary = runstore.summary(runstore.run_dir(run_id, root))
if not summary["per_rank"]:
    st.warning("This run logged no training step, so there is nothing measured to compare.")
    st.stop()
try:
    compared = pd.DataFrame(est.compare_with_measured(est.estimate_for_spec(summary["spec"]), summary["per_rank"]))
except (ValueError, IndexError) as err:
    st.error(f"Cannot predict this run's spec: {err}")
    st.stop()
st.dataframe(
    compared, hide_index=True, key="whatif_compare_table",
    column_config={"difference_pct": st.column_config.NumberColumn("difference %", format="%.4f")},
)
totals = compared[compared["category"] == "total"]
worst = totals["difference_bytes"].abs().max()
exact = bool((compared["difference_bytes"] == 0).all())
st.caption(
    ("Every category of every rank matches to the byte." if exact else f"Largest total difference: {worst:,} bytes.")
    + " Measured: the worker's walk over parameters, gradients and optimizer state after the last logged step."
)
st.altair_chart(charts.predicted_vs_measured_chart(compared), key="whatif_compare_chart")
