"""Training and evaluation on top of Detectron2's ``DefaultTrainer`` (see ``launch.main``)."""
from .plots import load_metrics, plot_metrics
from .trainer import CPUAutocastTrainer, Trainer, write_run_report
from .visualize import draw_predictions

__all__ = ["CPUAutocastTrainer", "Trainer", "draw_predictions", "load_metrics", "plot_metrics",
           "write_run_report"]
