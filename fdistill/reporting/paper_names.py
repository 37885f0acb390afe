"""The one place where the papers' names meet fdistill's: row labels → method labels (as fdistill's
reporting labels its runs: the divergence config name, plus the swept parameter where a table varies one),
column headers → (dataset config, metric key), the paper's pair → fdistill's pair config, and the factor
between a paper's printed scale and fdistill's (ROUGE, METEOR, BERTScore, ... are printed ×100).

``scripts/transcribe_papers.py`` uses these maps to write ``results/paper/*.csv`` from ``shared/papers``;
``fdistill.reporting.paper`` uses the scales to put paper values beside ours.
"""

from __future__ import annotations

# paper row label → fdistill method label
METHODS = {
    "f-DISTILL": {
        "Teacher": "teacher", "Non-distill (MLE)": "mle", "Pre-distill": "predistill", "SeqKD": "seqkd",
        "ENGINE": "engine", "KL": "kl", "RKL": "rkl", "JS": "js", "TVD": "tvd",
        "JS, online": "js (pipeline.distill.teacher_sampling=online)",
        "JS, offline": "js (pipeline.distill.teacher_sampling=offline)",
        "TVD, online": "tvd (pipeline.distill.teacher_sampling=online)",
        "TVD, offline": "tvd (pipeline.distill.teacher_sampling=offline)",
    },
    "KD tutorial": {  # multi-teacher part; the students there are the direct model's architecture
        "direct translation (Liu et al. 2021)": "teacher (individual, published)",
        "direct translation (replication)": "teacher (individual)",
        "pivoting (en)": "teacher (pivoting)",
        "word-level averaging ensemble": "teacher (ensemble=average)",
        "word-level voting ensemble": "teacher (ensemble=vote)",
        "sequence-level voting (MBR)": "teacher (ensemble=mbr)",
        "EBBS": "teacher (ensemble=ebbs)", "EBBS (the ensemble itself)": "teacher (ensemble=ebbs)",
        "direct, no distillation": "mle", "direct, self-distillation": "seqkd (ensemble.teacher_index=0)",
        "direct, union distillation": "seqkd (ensemble=union)", "direct, EBBS distillation": "seqkd (ensemble=ebbs)",
    },
    "AKL": {
        "Teacher": "teacher", "SFT": "mle", "SeqKD": "seqkd", "FKL": "kl", "RKL": "rkl", "SKL": "skl",
        "SRKL": "srkl", "FKL+RKL": "fkl_rkl (divergence.params.weight=0.5)", "AKL": "akl",
        "0.50 FKL + 0.50 RKL": "fkl_rkl (divergence.params.weight=0.5)",
        "0.25 FKL + 0.75 RKL": "fkl_rkl (divergence.params.weight=0.25)",
        "0.75 FKL + 0.25 RKL": "fkl_rkl (divergence.params.weight=0.75)",
        "AKL (μ=0.50)": "akl (divergence.params.mu=0.5)", "AKL (μ=0.45)": "akl (divergence.params.mu=0.45)",
        "AKL (μ=0.55)": "akl (divergence.params.mu=0.55)",
    },
}

# the papers' datasets as fdistill's dataset configs (others: a lower-case id)
DATASETS = {"DART": "dart", "XSum": "xsum", "EN-RO": "wmt16_en_ro", "MT EN-RO": "wmt16_en_ro",
            "WMT16 EN-RO": "wmt16_en_ro", "CD": "commonsense_dialogue", "Commonsense Dialogue": "commonsense_dialogue",
            "Dolly": "dolly", "S-NI": "sni", "UnNI": "unni"}

# the papers' teacher → student pairs as fdistill's pair configs (others: a descriptive id)
PAIRS = {
    ("f-DISTILL", "dart"): "bart_dart", ("f-DISTILL", "xsum"): "bart_xsum",
    ("f-DISTILL", "wmt16_en_ro"): "t5_wmt", ("f-DISTILL", "commonsense_dialogue"): "dialogpt_cd",
    ("AKL", "GPT2 1.5B → 120M"): "gpt2_dolly", ("AKL", "LLaMA 6.7B → TinyLLaMA 1.1B"): "llama7b_tinyllama",
}

# paper metric header → fdistill metric key
METRICS = {
    "BLEU4": "bleu", "BLEU": "bleu", "METEOR": "meteor", "TER": "ter", "BERTScore": "bertscore",
    "MoverScore": "moverscore", "BLEURT": "bleurt", "ROUGE-1": "rouge1", "ROUGE-2": "rouge2", "ROUGE-L": "rougeL",
    "chrF": "chrf", "BLEU1": "bleu1", "BLEU2": "bleu2", "R_llh": "risk/likelihood_risk_per_token",
    "R_cvg": "risk/coverage_risk_per_token", "TeacherDist": "teacher_dist", "speed-up": "speedup",
    "Fluency": "human/fluency", "MissingInfo": "human/missing_info", "Hallucination": "human/hallucination",
    "GPU memory": "gpu_memory_gb", "training time": "training_minutes",
}

# paper value = fdistill value × scale (fdistill's metrics keep each library's own scale)
SCALES = {"meteor": 100.0, "bertscore": 100.0, "moverscore": 100.0, "bleurt": 100.0, "rouge1": 100.0,
          "rouge2": 100.0, "rougeL": 100.0}


def metric_scale(metric: str) -> float:
    """Factor from fdistill's scale to the papers' printed one (`rougeL/closed_qa` scales like `rougeL`)."""
    return SCALES.get(metric, SCALES.get(metric.split("/")[0], 1.0))
