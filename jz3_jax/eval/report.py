"""Metrics and the results table of `eval` and `grade`."""

from __future__ import annotations

from jz3_jax.eval.datasets import DATASETS

# The paper's JiuZhang3.0 figures (natural-language CoT, accuracy in %), for table.md.
PAPER = {
    "JiuZhang3.0-7B": {"gsm8k": 88.6, "math": 52.8, "math_oai": 52.8, "svamp": 90.4, "asdiv": 92.6, "mawps": 97.3,
                       "carp_en": 51.0},
    "JiuZhang3.0-8x7B": {"gsm8k": 89.8, "math": 53.8, "math_oai": 53.8},
}


def metrics(samples: list[dict]) -> dict:
    """`{"accuracy", "accuracy_math_verify", "agreement", "n", "datasets": {name: {"n", "accuracy",
    "accuracy_math_verify", "agreement"}}}`: fractions in [0, 1] (agreement: the share of samples
    on which the two graders agree); overall = over all samples (micro average)."""
    by: dict[str, list[dict]] = {}
    for s in samples:
        by.setdefault(s["dataset"], []).append(s)

    def acc(rows: list[dict], key: str) -> float:
        return round(sum(bool(r[key]) for r in rows) / len(rows), 6) if rows else 0.0

    def agree(rows: list[dict]) -> float:
        return round(sum(bool(r["correct"]) == bool(r["correct_math_verify"]) for r in rows) / len(rows), 6) \
            if rows else 1.0

    return {
        "n": len(samples),
        "accuracy": acc(samples, "correct"),
        "accuracy_math_verify": acc(samples, "correct_math_verify"),
        "agreement": agree(samples),
        "datasets": {name: {"n": len(rows), "accuracy": acc(rows, "correct"),
                            "accuracy_math_verify": acc(rows, "correct_math_verify"), "agreement": agree(rows)}
                     for name, rows in sorted(by.items())},
    }


def table_markdown(result: dict, setting: str, model: str, policy: str) -> str:
    """Our accuracy per dataset (both graders, %) beside the paper's figures."""
    header = ["dataset", "n", "ours (%)", "ours, math-verify (%)", *PAPER]
    lines = [f"Model: `{model}`, setting: {setting}, grading policy: {policy} (graders agree on "
             f"{100 * result['agreement']:.1f}% of items). Paper figures: natural-language CoT, full test sets.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in result["datasets"].items():
        paper = [f"{PAPER[m][name]:.1f}" if name in PAPER[m] else "—" for m in PAPER]
        lines.append(f"| {name} | {row['n']} | {100 * row['accuracy']:.1f} | {100 * row['accuracy_math_verify']:.1f} | "
                     + " | ".join(paper) + " |")
    lines.append(f"| **all** | {result['n']} | {100 * result['accuracy']:.1f} | "
                 f"{100 * result['accuracy_math_verify']:.1f} | " + " | ".join("" for _ in PAPER) + " |")
    return "\n".join(lines) + "\n"


def known_datasets() -> list[str]:
    return list(DATASETS)
