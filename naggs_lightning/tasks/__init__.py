"""LightningModules and DataModules that train in minutes on a CPU with data that need no download.

======================  ==============================================  =================================
data                    DataModule                                      models
======================  ==============================================  =================================
sklearn digits (8x8)    :class:`DigitsDataModule`                       :class:`LogisticRegression`,
                                                                        :class:`MLP`, :class:`DigitsCNN`,
                                                                        :class:`DeepDigitsCNN`
sklearn breast cancer   :class:`BreastCancerDataModule`                 :class:`LogisticRegression`
                                                                        (``in_features=30, num_classes=2``)
least squares           :class:`QuadraticDataModule` (chosen spectrum)  :class:`LeastSquares`
noisy 1-D waveforms     :class:`SignalDataModule`                       :class:`SignalCNN`
reverse / sort tokens   :class:`SequenceDataModule`                     :class:`SequenceTransformer`
======================  ==============================================  =================================

Every model implements ``compute_loss(batch)`` and logs ``train_loss``, ``val_loss`` (and ``val_acc``
for classifiers); see :mod:`naggs_lightning.tasks.base`.
"""

from naggs_lightning.tasks.base import ArrayDataModule, ClassificationTask, Task
from naggs_lightning.tasks.breast_cancer import BreastCancerDataModule
from naggs_lightning.tasks.digits import MLP, DigitsCNN, DigitsDataModule, LogisticRegression
from naggs_lightning.tasks.quadratic import LeastSquares, QuadraticDataModule
from naggs_lightning.tasks.sequence import SequenceDataModule, SequenceTransformer
from naggs_lightning.tasks.sharpening import DeepDigitsCNN, SignalCNN, SignalDataModule

__all__ = [
    "ArrayDataModule",
    "BreastCancerDataModule",
    "ClassificationTask",
    "DeepDigitsCNN",
    "DigitsCNN",
    "DigitsDataModule",
    "LeastSquares",
    "LogisticRegression",
    "MLP",
    "QuadraticDataModule",
    "SequenceDataModule",
    "SequenceTransformer",
    "SignalCNN",
    "SignalDataModule",
    "Task",
]
