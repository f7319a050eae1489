"""The CPU benchmark's tables: the console table ``neurons.py`` prints after a run, and docs/performance.md's markdown
table, made from a results file (``python benchmarks/neurons.py --markdown benchmarks/results/neurons_cpu.json``)."""

from __future__ import annotations

VARIANT_LABELS = {
    "relu": "ReLU control",
    "1arg": "1-arg control (auto path)",
    "reference": "plain vectorised reference",
    "plain": "plain layers",
    "lean": "lean exact (torch ops)",
    "fused": "fused exact: native kernel, fp32 (auto on CPU)",
    "fused_bf16": "`fused_bf16`: native kernel, bf16 products, fp32 training",
    "bf16_mixed": "bf16-mixed autocast (auto: bf16 kernel)",
    "table": "frozen table",
    "compiled": "`torch.compile` of the plain layers",
}
"""How docs/performance.md names each variant, in the table's order (others, the baseline neurons, follow by their own
name)."""


def _ordered(rows: dict[str, dict]) -> list[tuple[str, dict]]:
    order = list(VARIANT_LABELS)
    return sorted(rows.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def _ratio(row: dict, relu: dict, key: str, value_format: str) -> tuple[str, str]:
    """A row's value and its ratio to the ReLU control's, formatted, or dashes where it was not measured."""
    if key not in row:
        return "-", "-"
    return format(row[key], value_format), f"{row[key] / relu[key]:.2f}"


def markdown_table(result: dict[str, object]) -> str:
    """docs/performance.md's table of a CPU results file: per model and variant the inner-net path its training step
    ran, the training step, inference, attack gradient and peak training memory, each beside its ratio to ReLU's."""
    lines = [
        "| model | variant | inner path run | train step s | x ReLU | inference img/s | x ReLU | attack gradient s "
        "| x ReLU | peak train MiB | x ReLU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, res in result["models"].items():
        relu = res["rows"]["relu"]
        for variant, row in _ordered(res["rows"]):
            paths = ", ".join(row.get("inner_paths", [])) or "-"
            cells = [model.upper(), VARIANT_LABELS.get(variant, f"`{variant}`"), paths]
            for key, value_format in (
                ("train_step_s", ".4f"),
                ("inference_images_per_s", ",.0f"),
                ("attack_gradient_s", ".4f"),
                ("peak_train_memory_mib", ",.1f"),
            ):
                cells += _ratio(row, relu, key, value_format)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(result: dict[str, object]) -> None:
    """The console table of a run's results (the ratios and every measured figure)."""
    print(
        f"\nmachine: {result['machine']}  threads: {result['threads']}  dense fp32 matmul: "
        f"{result['matmul_gflops']:.1f} GFLOP/s"
    )
    header = f"{'model':5} {'variant':10} {'train step s':>12} {'x ReLU':>7} {'infer img/s':>12} {'x ReLU':>7} "
    print(
        header + f"{'attack grad s':>13} {'x ReLU':>7} {'peak MiB':>9} {'x ReLU':>7} {'disagree pp':>11}  "
        "inner path run"
    )
    for model, res in result["models"].items():
        relu = res["rows"]["relu"]
        for variant, row in _ordered(res["rows"]):
            mem, gradient = row.get("peak_train_memory_mib"), row.get("attack_gradient_s")
            print(
                f"{model:5} {variant:10} {row['train_step_s']:12.4f} {row['train_step_s'] / relu['train_step_s']:7.2f} "
                f"{row['inference_images_per_s']:12.1f} "
                f"{row['inference_images_per_s'] / relu['inference_images_per_s']:7.3f} "
                + (
                    f"{gradient:13.4f} {gradient / relu['attack_gradient_s']:7.2f} "
                    if gradient is not None
                    else f"{'-':>13} {'-':>7} "
                )
                + (
                    f"{mem:9.1f} {mem / relu['peak_train_memory_mib']:7.2f} "
                    if mem is not None
                    else f"{'-':>9} {'-':>7} "
                )
                + f"{row.get('prediction_disagreement_pp', float('nan')):11.2f}  "
                + (", ".join(row.get("inner_paths", [])) or "-")
            )
        flops = res["forward_flops_per_image"]
        print(
            f"{model:5} forward MFLOP/image: 2arg {flops['2arg']['total'] / 1e6:.1f} "
            f"(inner {flops['2arg']['inner'] / 1e6:.1f}), relu {flops['relu']['total'] / 1e6:.1f}"
        )
    if result["inner_gflops"]:
        print(
            "inner net training GFLOP/s on the CNN's first layer: "
            + ", ".join(
                f"{k} {v:.1f} ({v / result['matmul_gflops']:.3f} of matmul)" for k, v in result["inner_gflops"].items()
            )
        )
    print("ratios:")
    for key, value in result["ratios"].items():
        print(f"  {key}: {value:.3f}")
