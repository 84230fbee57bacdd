"""What-if page: per-GPU memory for any model, ZeRO stage, memory model and cluster, instantly; and a finished
run of the chosen ShardLab model, its prediction beside what each rank measured (model states and activations).
Thin layout: numbers from engine.estimate, charts from app.whatif_charts, keys from app.state. Torch is imported
only for ShardLab's own models (meta device, nothing allocated)."""

import math

import pandas as pd
import streamlit as st

from app import whatif_charts as charts
from app.state import WHATIF_KEYS as KEYS
from engine import estimate as est
from engine import runstore
from engine.architectures import ARCHITECTURES, NOMINAL_MODELS, SUPPORTED_TYPES
from engine.registry import DATASETS, MODELS
from engine.units import display_unit, format_bytes, unit_note

SOURCES = ("Published architecture", "ShardLab model (exact)", "Parameter count", "Hugging Face config.json")
MEMORY_MODEL_LABELS = {"paper": "ZeRO paper", "deepspeed": "DeepSpeed runtime", "pytorch": "PyTorch (FSDP2, exact)"}
CUSTOM_GPU = "Custom capacity"
UNITS = ("GiB (2^30 bytes)", "GB (1e9 bytes, the ZeRO paper's)")


out_of_range: list[str] = []  # messages for numbers typed outside their range; the page computes nothing then


def bounded_number(label: str, lo, hi, *args, key: str, **kwargs):
    """st.number_input without min/max, checked here. With min/max the browser keeps the last valid value of an
    out-of-range one and shows only a red '!': '0 nodes' silently stayed '1 node'. Here the value stays as typed,
    the error sits under the field, and the page computes nothing until it is fixed."""
    def plain(x) -> str:  # 1,000,000 rather than 1e+06
        return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:,g}"

    if isinstance(lo, float):  # as typed: Streamlit's default "%0.2f" showed a typed 0.004 as "0.00"
        kwargs.setdefault("format", "%g")
    value = st.number_input(label, None, None, *args, key=key, **kwargs)
    if value is not None and not lo <= value <= hi:
        out_of_range.append(f"{label}: {plain(value)} is out of range ({plain(lo)} to {plain(hi)})")
        st.error(f"Choose {plain(lo)} to {plain(hi)} (got {plain(value)}).", icon=":material/error:")
    return value


def architecture_label(name: str) -> str:
    if name in ARCHITECTURES:
        return ARCHITECTURES[name].name
    return f"ZeRO paper example, Ψ = {NOMINAL_MODELS[name] / 1e9:g}B"


st.title("What-if: memory per GPU")
st.caption(
    "Model states under three memory models (the ZeRO paper's arithmetic, DeepSpeed's runtime, PyTorch's FSDP2 "
    "and ZeroRedundancyOptimizer to the byte), activations as Korthikanti et al. 2022 count them, and the "
    "overheads a real GPU adds, for any model, stage and cluster."
)

# ------------------------------------------------------------------------------ inputs (left)
source, problem = None, None
with st.sidebar:
    st.header("Model")
    kind = st.radio("Model from", SOURCES, key=KEYS["source"])
    try:
        if kind == SOURCES[0]:
            name = st.selectbox("Architecture", [*ARCHITECTURES, *NOMINAL_MODELS], key=KEYS["arch"], format_func=architecture_label)
            source = est.resolve_source(model=name)
        elif kind == SOURCES[1]:
            model = st.selectbox("ShardLab model", list(MODELS), key=KEYS["model"])
            size = st.selectbox("Size", list(MODELS[model].presets), key=KEYS["size"])
            datasets = [d for d, info in DATASETS.items() if info.kind == MODELS[model].input_kind]
            dataset = st.selectbox("Dataset (sizes the first and last layers)", datasets, key=KEYS["dataset"])
            source = est.resolve_source(model=model, size=size, dataset=dataset)
        elif kind == SOURCES[2]:
            text = st.text_input("Parameters Ψ (e.g. 124M, 7.5B, 1T; at most 1e15)", value="7.5B", key=KEYS["params"])
            largest = st.text_input("Largest layer's parameters (DeepSpeed's ZeRO-3; blank = 0)", value="",
                                    key=KEYS["largest_layer"])
            source = est.resolve_source(params=text, largest_layer=est.parse_count(largest) if largest.strip() else None)
        else:
            upload = st.file_uploader(
                "config.json (read as data only)", type=["json"], key=KEYS["config"], max_upload_size=1,
                help=f"A Hugging Face config.json ({', '.join(SUPPORTED_TYPES)}); nothing in it is executed.",
            )
            if upload is not None:
                source = est.resolve_source(config=upload.getvalue(), config_name=upload.name)
    except ValueError as err:  # EstimateError and ArchitectureError: messages written for the reader
        problem = str(err)

    st.header("Memory model")
    has_shapes = source is not None and source.shapes is not None
    models = [m for m in est.MEMORY_MODELS if m != "pytorch" or has_shapes]
    default_model = "pytorch" if source is not None and source.kind == "shardlab" else "paper"
    source_kind = source.kind if source is not None else None
    if st.session_state.get(KEYS["memory_model"]) not in models or st.session_state.get(KEYS["memory_model_for"]) != source_kind:
        # A new kind of source brings its defaults: for ShardLab's own models the exact model and no GPU
        # overheads (its runs measure model states, on CPU here); for the others the paper's and the overheads.
        st.session_state[KEYS["memory_model_for"]] = source_kind
        st.session_state[KEYS["memory_model"]] = default_model
        shardlab = source_kind == "shardlab"
        st.session_state[KEYS["context"]] = 0.0 if shardlab else est.DEFAULT_CONTEXT_BYTES / est.GIB
        st.session_state[KEYS["reserve"]] = 0 if shardlab else est.DEFAULT_RESERVE_PCT
    st.session_state.setdefault(KEYS["context"], est.DEFAULT_CONTEXT_BYTES / est.GIB)
    st.session_state.setdefault(KEYS["reserve"], est.DEFAULT_RESERVE_PCT)
    memory_model = st.radio(
        "Count memory as", models, key=KEYS["memory_model"], format_func=MEMORY_MODEL_LABELS.get,
        help="PyTorch's needs every parameter's shape: an architecture, a config.json or a ShardLab model.",
    )

    st.header("Cluster and training")
    nodes = bounded_number("Nodes", 1, est.MAX_RANKS, 1, step=1, key=KEYS["nodes"])
    per_node = bounded_number("GPUs per node", 1, est.MAX_RANKS, 8, step=1, key=KEYS["ranks"])
    if memory_model == "pytorch":
        precision = st.selectbox("Precision (the engine's)", est.ENGINE_PRECISIONS, key=KEYS["engine_precision"])
    else:
        precision = st.selectbox(
            "Precision", list(est.PAPER_PRECISIONS), index=list(est.PAPER_PRECISIONS).index("bf16"), key=KEYS["precision"],
            format_func=lambda p: f"{p}: {est.PAPER_PRECISIONS[p].label}",
        )
    optimizer = st.selectbox("Optimizer", list(est.OPTIMIZER_STATES), key=KEYS["optimizer"])
    offload = st.checkbox(
        "Offload optimizer to CPU", key=KEYS["offload"], disabled=memory_model == "pytorch",
        help="ZeRO-Offload: fp32 master weights and optimizer state (DeepSpeed: and fp32 grads) in host memory.",
    ) and memory_model != "pytorch"
    offload_params = st.checkbox(
        "Offload parameters to CPU (ZeRO-3)", key=KEYS["offload_params"], disabled=not (memory_model == "deepspeed" and offload),
    ) and memory_model == "deepspeed" and offload
    prefetch = bounded_number("ZeRO-3 prefetch depth (layers gathered ahead)", 0, 64, 1, step=1, key=KEYS["prefetch"])

    st.header("GPU")
    gpu_names = [*est.GPUS, CUSTOM_GPU]
    gpu = st.selectbox("GPU", gpu_names, index=gpu_names.index("NVIDIA A100 80 GB"), key=KEYS["gpu"])
    if gpu == CUSTOM_GPU:
        capacity_bytes = int(bounded_number("Capacity (GiB)", 0.1, 10_000.0, 80.0, key=KEYS["gpu_custom"]) * est.GIB)
    else:
        capacity_bytes = est.GPUS[gpu]
    host_gib = bounded_number("Host memory per node (GiB)", 1.0, 1_000_000.0, 1024.0, key=KEYS["host_mem"])
    decimal = st.radio("Units", UNITS, key=KEYS["units"]) == UNITS[1]

    arch = source.arch if source is not None else None
    with st.expander("Activations", expanded=arch is not None):
        activation_bytes = 0
        if arch is None:
            st.caption("Activations need a transformer layout: pick an architecture, ShardLab's gpt or a config.json.")
        else:
            if st.session_state.get(KEYS["arch_seen"]) != arch.name:
                # A new architecture brings its own defaults (its context, whether it used dropout).
                st.session_state[KEYS["arch_seen"]] = arch.name
                st.session_state[KEYS["seq"]] = min(arch.context, 2048)
                st.session_state[KEYS["dropout"]] = arch.dropout
            batch = bounded_number("Micro-batch per GPU (0 = leave out)", 0, est.inputs.MAX_BATCH, 1, step=1, key=KEYS["batch"])
            seq = bounded_number("Sequence length", 1, est.inputs.MAX_SEQ, step=1, key=KEYS["seq"])
            recompute = st.selectbox("Recomputation", est.RECOMPUTE, key=KEYS["recompute"])
            attention = st.selectbox(
                "Attention kernel", est.ATTENTION, key=KEYS["attention"],
                format_func={"flash": "flash (SDPA/FlashAttention: no s² scores)", "eager": "eager (stores the s² scores)"}.get,
            )
            dropout = st.checkbox("Trained with dropout (1-byte masks)", key=KEYS["dropout"])
            st.caption(f"{est.activation_bytes_for(precision)} bytes per activation ({precision}); logits in fp32.")
            if batch:
                try:
                    activation_bytes = est.estimate_activations(
                        arch, int(batch), int(seq), recompute, est.activation_bytes_for(precision), dropout, attention,
                    ).total_bytes
                except ValueError as err:
                    problem = problem or str(err)
    with st.expander("Overheads (on by default for GPUs; set yours)"):
        context_gib = bounded_number(
            "CUDA context and workspaces (GiB)", 0.0, 1000.0, step=0.25,
            key=KEYS["context"], help="CUDA context, cuBLAS/cuDNN/NCCL workspaces and the framework: 0.5-1 GiB is common.",
        )
        reserve_pct = bounded_number(
            "Allocator reserve (% of allocated)", 0, 100, step=1, key=KEYS["reserve"],
            help="The caching allocator's fragmentation and rounding: what nvidia-smi shows beyond what tensors hold.",
        )
        comm_mib = bounded_number(
            "Communication buffers (MiB; blank = the memory model's default)", 0.0, 1_000_000.0, None, step=25.0,
            key=KEYS["comm"], help="DeepSpeed: its 5e8-element reduce bucket; PyTorch and the paper: none extra.",
        )

if out_of_range:
    st.error("Numbers out of range in the sidebar, so nothing is computed: " + "; ".join(out_of_range) + ".",
             icon=":material/error:")
    st.stop()
if problem:
    st.error(problem, icon=":material/error:")
    st.stop()
if source is None:
    st.info("Upload a Hugging Face config.json in the sidebar to size its model.", icon=":material/upload_file:")
    st.stop()
nodes, per_node = int(nodes), int(per_node)
ranks = nodes * per_node
if ranks > est.MAX_RANKS:
    st.error(f"{nodes:,} nodes x {per_node:,} GPUs = {ranks:,} GPUs: the estimator stops at {est.MAX_RANKS:,}.",
             icon=":material/error:")
    st.stop()

# ------------------------------------------------------------------------------ the estimate
try:
    overheads = est.Overheads(int(context_gib * est.GIB), int((comm_mib or 0) * est.MIB), int(reserve_pct))

    def scenario_for(model: str) -> est.Scenario:
        valid = est.ENGINE_PRECISIONS if model == "pytorch" else est.PAPER_PRECISIONS
        return est.Scenario(
            source.num_params, ranks, precision if precision in valid else ("fp32" if model == "pytorch" else "bf16"),
            optimizer, offload and model != "pytorch", activation_bytes, overheads, source.shapes, model, nodes,
            offload_params and model == "deepspeed", source.largest_layer_params, source.largest_unit_params,
            int(prefetch), comm_mib is None, int(host_gib * est.GIB),
        )

    scenario = scenario_for(memory_model)
    rows = est.stage_rows(scenario, capacity_bytes)
    terms = pd.DataFrame(est.stage_terms(scenario))
    curve = pd.DataFrame(est.ranks_curve(scenario, charts.curve_ranks(ranks)))
except ValueError as err:
    st.error(str(err), icon=":material/error:")
    st.stop()

divisor, unit = display_unit(max(r["total_bytes"] for r in rows), decimal)
fmt = lambda b: format_bytes(b, decimal, digits=4)
gpu_label = gpu if gpu != CUSTOM_GPU else f"custom {capacity_bytes / est.GIB:g} GiB"
active = f" ({est.format_count(source.active_params)} active per token)" if source.active_params else ""
st.markdown(
    ("" if source.kind == "count" else f"**{source.label}**: ")
    + f"Ψ = **{est.format_count(source.num_params)}** parameters ({source.num_params:,}){active} "
    f"on **{nodes:,} node{'s' if nodes > 1 else ''} x {per_node:,} GPUs** (N = {ranks:,}), {precision}, {optimizer}"
)
st.caption(est.memory_model_note(memory_model))
if memory_model == "deepspeed" and not source.largest_layer_params:
    st.caption("Largest layer unknown (a bare parameter count): DeepSpeed's ZeRO-3 gathered-layer buffers count as 0 "
               "here; give it in the sidebar.")
if source.unknown_keys:
    st.warning(f"config.json keys not used (check they do not change the model): {', '.join(source.unknown_keys)}",
               icon=":material/warning:")
for column, row in zip(st.columns(4), rows):
    column.metric(
        row["stage"], fmt(row["total_bytes"]),
        "fits" if row["fits"] else "does not fit", delta_color="normal" if row["fits"] else "inverse",
        delta_arrow="off", help=f"per GPU (the busiest rank) against {gpu_label}",
    )
    fewest = row["min_ranks_to_fit"]
    column.caption(
        ("fewest GPUs: never" if fewest is None else
         f"fewest GPUs: {fewest:,} ({row['min_nodes_to_fit']:,} node{'s' if row['min_nodes_to_fit'] > 1 else ''})")
        + f"  \nlargest model on {ranks:,}: {est.format_count(row['max_params_to_fit'])}"
    )

left, right = st.columns(2)
left.altair_chart(charts.stage_bar_chart(terms, capacity_bytes, gpu_label, decimal), key="whatif_stage_chart")
right.altair_chart(charts.ranks_line_chart(curve, capacity_bytes, gpu_label, decimal), key="whatif_ranks_chart")

table = charts.stage_table(rows, divisor, unit, ranks)
st.dataframe(charts.summary_table(table, unit), hide_index=True, key="whatif_table",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if f"({unit})" in c})
st.caption(
    f"{unit_note(unit)}. Activations are not sharded by ZeRO: every GPU keeps the activations of its own micro-batch "
    "whatever the stage. Communication as the ZeRO paper counts it per GPU and step: 2Ψ for DDP, ZeRO-1 and ZeRO-2, "
    "3Ψ for ZeRO-3. 'Fewest GPUs' and 'largest model' keep activations, gathered layers and overheads fixed."
    + (" Offload applies to ZeRO stages; the DDP row offloads nothing." if offload else "")
    + (" PyTorch model: ZeRO-1 splits whole parameters and FSDP2 pads dim 0, so ranks differ; the busiest is shown."
       if memory_model == "pytorch" else "")
)
with st.expander("Every term per stage: exact bytes, offload, host memory, fewest GPUs, communication",
                 icon=":material/table_rows:"):
    st.dataframe(charts.terms_by_stage(table), hide_index=True, height="content", key="whatif_breakdown_table",
                 column_config={stage: st.column_config.TextColumn(alignment="right") for stage in table["stage"]})

# All three memory models, totals side by side (the PyTorch one only where shapes are known).
compare_models = [m for m in est.MEMORY_MODELS if m != "pytorch" or has_shapes]
try:
    side_by_side = pd.DataFrame(
        {"memory model": MEMORY_MODEL_LABELS[m], **{r["stage"]: fmt(r["model_states_bytes"] + r["gathered_bytes"])
                                                    for r in est.stage_rows(scenario_for(m))}}
        for m in compare_models
    )
    st.markdown("**Model states (and gathered layers) per GPU, by memory model**")
    st.dataframe(side_by_side, hide_index=True, key="whatif_models_table")
    st.caption(f"Same model, cluster, optimizer and precision ({precision}, where a model has it: the PyTorch model "
               "knows fp32, bf16 and fp64, and falls back to fp32). Activations and overheads are the same for all.")
except ValueError as err:
    st.caption(f"Side-by-side comparison unavailable: {err}")

# ------------------------------------------------------------------------------ predicted vs measured
st.subheader("Predicted vs measured")
if source.kind != "shardlab":
    st.info("Pick a ShardLab model above to set its prediction beside runs of that model.", icon=":material/info:")
    st.stop()
root = runstore.runs_dir_default()
finished = [
    r for r in runstore.list_runs(root)
    if r["state"] in ("succeeded", "cancelled") and all(r["spec"].get(k) == v for k, v in source.spec.items())
]
if not finished:
    st.info(f"No finished run of {source.label} yet: train one on the Train page, then compare it here.",
            icon=":material/info:")
    st.stop()


def run_label(run_id: str) -> str:
    spec = next(r["spec"] for r in finished if r["run_id"] == run_id)
    return f"{run_id} — {spec['strategy']}, {spec['nproc'] * spec.get('nnodes', 1)} ranks, {spec['precision']}"


run_id = st.selectbox(f"Finished run of {source.label}", [r["run_id"] for r in finished], key=KEYS["run"], format_func=run_label)
summary = runstore.summary(runstore.run_dir(run_id, root))
if not summary["per_rank"]:
    st.warning("This run logged no training step, so there is nothing measured to compare.")
    st.stop()
try:
    compared = pd.DataFrame(est.compare_with_measured(est.estimate_for_spec(summary["spec"]), summary["per_rank"]))
except (ValueError, IndexError) as err:
    st.error(f"Cannot predict this run's spec: {err}")
    st.stop()
compare_table = charts.compare_table(compared)
st.dataframe(compare_table, hide_index=True, key="whatif_compare_table",
             column_config={c: st.column_config.TextColumn(alignment="right") for c in compare_table.columns[2:]})
totals = compared[compared["category"] == "total"]
worst = totals["difference_bytes"].abs().max()
exact = bool((compared["difference_bytes"] == 0).all())
st.caption(
    ("Every category of every rank matches to the byte." if exact else f"Largest total difference: {worst:,} bytes.")
    + " Measured: the worker's walk over parameters, gradients and optimizer state after the last logged step."
    + f" Difference: measured − predicted; {charts.NO_VALUE} where nothing was measured or no bytes were predicted."
)
st.altair_chart(charts.predicted_vs_measured_chart(compared), key="whatif_compare_chart")

predicted_act = est.activations_for_spec(summary["spec"])
measured_act = [(r["rank"], r.get("activation_bytes")) for r in summary["per_rank"]]
if predicted_act is not None:
    st.markdown("**Activations: predicted beside measured**")
    if all(m is None for _, m in measured_act):
        st.caption("This run predates activation measurement (or ran uninstrumented): nothing measured to compare.")
    else:
        acts_table = charts.activations_table(predicted_act.total_bytes, measured_act)
        st.dataframe(acts_table, hide_index=True, key="whatif_activations_table",
                     column_config={c: st.column_config.TextColumn(alignment="right") for c in acts_table.columns[1:]})
        st.caption(
            "Predicted: Korthikanti et al.'s terms for this GPT (flash attention: torch SDPA keeps a log-sum-exp, not "
            "the s² scores), at the run's micro-batch and precision"
            + (f", plus {fmt(predicted_act.weight_copies_bytes)} of bf16 weight copies autocast keeps"
               if predicted_act.weight_copies_bytes else "")
            + ". Measured: bytes each rank saved for backward on the last logged step (saved_tensors_hooks, each "
            "storage once, parameters excluded). The formula leaves out LayerNorm's mean and rstd and the token ids "
            "(under 1% in fp32); under bf16 autocast the norms run in fp32, so the measured bytes sit above it."
        )
