"""Few-label heads: tasks, draws, heads (probe, k-NN), evaluation with intervals, saved models.

``python -m ssl_rcc finetune`` runs :func:`run_finetune`; ``predict`` and ``evaluate`` apply a saved
model to new cases and score saved predictions against another site's labels.
"""

from .draws import Draw, few_label_draws, parse_shots
from .evaluation import evaluate_draws
from .heads import PROTOCOLS, KnnHead, ProbeHead
from .model import load_model, save_model
from .run import evaluate_predictions, predict_cases, run_finetune
from .tasks import TASKS, Task, get_task

__all__ = ["Draw", "few_label_draws", "parse_shots", "evaluate_draws", "PROTOCOLS", "KnnHead", "ProbeHead",
           "load_model", "save_model", "evaluate_predictions", "predict_cases", "run_finetune", "TASKS", "Task", "get_task"]
