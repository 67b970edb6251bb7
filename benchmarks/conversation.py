"""LLaVA v1 conversation template, as the FlexAttention release's eval scripts hard-code it."""

IMAGE_TOKEN = "<image>"

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# The system prompt of the official V* evaluation (penghao-wu/vstar): "user", not "human".
VSTAR_OFFICIAL_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."


def llava_v1_prompt(question: str, system: str = LLAVA_V1_SYSTEM, with_image: bool = True) -> str:
    """`{system} USER: <image>\\n{question} ASSISTANT:` (spec section 8)."""
    image = f"{IMAGE_TOKEN}\n" if with_image else ""
    return f"{system} USER: {image}{question} ASSISTANT:"
