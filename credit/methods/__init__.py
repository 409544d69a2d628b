"""The credit-assignment methods, one file each."""

from credit.methods.backprop import Backprop
from credit.methods.direct_feedback_alignment import DirectFeedbackAlignment
from credit.methods.feedback_alignment import FeedbackAlignment
from credit.methods.kickback import Kickback
from credit.methods.synthetic_gradients import SyntheticGradients

__all__ = ["Backprop", "DirectFeedbackAlignment", "FeedbackAlignment", "Kickback",
           "SyntheticGradients"]
