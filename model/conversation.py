"""LLaVA-1.5's v1 conversation, the template FlexLlava applies to a request (the release's eval
scripts hard-code it). A request carries the benchmark's question and, where its protocol needs
one, a system text (flexeval/requests.py); the template is the model's business."""

IMAGE_TOKEN = "<image>"

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def llava_v1_prompt(question: str, system: str | None = None, with_image: bool = True) -> str:
    """`{system} USER: <image>\\n{question} ASSISTANT:` (spec section 8); system None: LLaVA's own."""
    image = f"{IMAGE_TOKEN}\n" if with_image else ""
    return f"{system or LLAVA_V1_SYSTEM} USER: {image}{question} ASSISTANT:"
