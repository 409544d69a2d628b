"""The credit-assignment methods, one file each."""

from credit.methods.backprop import Backprop
from credit.methods.batchwise_random_sign_feedback import BatchwiseRandomSignFeedback
from credit.methods.delayed_feedback import DelayedFeedback
from credit.methods.direct_feedback_alignment import DirectFeedbackAlignment
from credit.methods.direct_random_target_projection import DirectRandomTargetProjection
from credit.methods.feedback_alignment import FeedbackAlignment
from credit.methods.fixed_random_sign_feedback import FixedRandomSignFeedback
from credit.methods.forward_forward import ForwardForward
from credit.methods.forward_gradient import ForwardGradient
from credit.methods.kickback import Kickback
from credit.methods.kolen_pollack import KolenPollack
from credit.methods.local_losses import LocalLosses
from credit.methods.pepita import Pepita
from credit.methods.sign_symmetry import SignSymmetry
from credit.methods.synthetic_gradients import SyntheticGradients
from credit.methods.synthetic_gradients_through_time import SyntheticGradientsThroughTime

__all__ = ["Backprop", "BatchwiseRandomSignFeedback", "DelayedFeedback",
           "DirectFeedbackAlignment",
           "DirectRandomTargetProjection", "FeedbackAlignment", "FixedRandomSignFeedback",
           "ForwardForward", "ForwardGradient", "Kickback", "KolenPollack", "LocalLosses",
           "Pepita", "SignSymmetry", "SyntheticGradients", "SyntheticGradientsThroughTime"]
