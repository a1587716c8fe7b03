"""finch: fine-tune pretrained transformers with the Trainer API the tutorials teach."""

import logging

from transformers import EvalPrediction

from finch.args import Seq2SeqTrainingArguments, TrainingArguments
from finch.errors import MaskSecretsFilter
from finch.hf.metrics import load_metric
from finch.observers.trackers import MLflowCallback, TensorBoardCallback, WandbCallback
from finch.state import TrainerControl, TrainerState
from finch.training.callbacks import EarlyStoppingCallback, ProgressCallback, TrainerCallback
from finch.training.seq2seq import Seq2SeqTrainer
from finch.training.trainer import Trainer

logging.getLogger("finch").addFilter(MaskSecretsFilter())  # no password in any message finch logs

__version__ = "0.1.0"
__all__ = ["EarlyStoppingCallback", "EvalPrediction", "MLflowCallback", "ProgressCallback", "Seq2SeqTrainer",
           "Seq2SeqTrainingArguments", "TensorBoardCallback", "Trainer", "TrainerCallback", "TrainerControl",
           "TrainerState", "TrainingArguments", "WandbCallback", "__version__", "load_metric"]
