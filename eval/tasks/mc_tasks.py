"""Helpers referenced by the task YAMLs in this folder (``!function mc_tasks.<name>``)."""

from __future__ import annotations


def load_mc_dataset(**kwargs):
    """``custom_dataset`` for the multiple-choice tasks: the JSONL file named by the task
    manager's metadata ``mc_data_file`` (hub schema: question, mc1_targets, mc2_targets),
    else the hub dataset ``truthfulqa/truthful_qa`` (``multiple_choice``, validation)."""
    import datasets

    path = kwargs.get("mc_data_file")
    if path:
        return datasets.DatasetDict({"validation": datasets.Dataset.from_json(str(path))})
    ds = datasets.load_dataset("truthfulqa/truthful_qa", "multiple_choice", split="validation")
    return datasets.DatasetDict({"validation": ds})


def process_results_mc2(doc, results):
    """MC2: normalised probability mass on the true choices (rlhf_eval.metrics.mc2_score)."""
    from rlhf_eval.metrics import mc2_score

    ll = [r[0] for r in results]
    return {"acc": mc2_score(ll, doc["mc2_targets"]["labels"])}
