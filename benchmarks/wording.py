"""Wording the benchmarks own: the short-answer suffix of LLaVA-1.5's eval scripts and the system
text the official V* protocol prescribes. The chat template around them is the model's
(model/conversation.py for FlexLlava, the checkpoint's own for a transformers model)."""

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

# The system prompt of the official V* evaluation (penghao-wu/vstar): "user", not "human".
VSTAR_OFFICIAL_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
