"""Model configuration: what the checkpoint says (FlexConfig) and what the user picks (RunOptions)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flexeval.errors import FlexEvalError

SELECTIONS = ("attention", "random", "center", "all", "none")


@dataclass
class FlexConfig:
    """Architecture of a LLaVA-1.5 checkpoint, FlexAttention or baseline (spec section 1)."""

    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    vocab_size: int = 32000
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    mm_hidden_size: int = 1024
    projector_type: str = "mlp2x_gelu"
    vision_tower: str = "openai/clip-vit-large-patch14-336"
    vision_select_layer: int = -2
    bos_token_id: int = 1
    eos_token_id: int = 2
    # FlexAttention (`extra` in the release config); has_hd is False for plain LLaVA-1.5.
    has_hd: bool = False
    zoom_ratio: int = 3
    lowres_size: int = 336
    highres_size: int = 1008
    threshold: float = 48.0
    first_select_layer: int = 8  # S: layer S makes the first selection, layers > S use high-res keys
    format: str = "release"  # release | llava | llava-hf

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """Inference knobs as the user gives them (the paper's ablations). None means: the checkpoint's value."""

    selection: str | None = None  # None: attention for FlexAttention checkpoints, none for plain LLaVA
    threshold: float | None = None  # out of 255
    first_hd_layer: int | None = None  # first layer that uses high-res keys (release: 9 = S + 1)
    zoom: int | None = None  # 2 | 3 | 4 -> 672 / 1008 / 1344 px
    random_ratio: float = 0.1  # release's random ablation: each 8x8-grid cell with p = 0.1
    seed: int = 0

    def resolve(self, cfg: FlexConfig) -> ResolvedOptions:
        """Check the knobs against the checkpoint and fill in its values; bad values raise."""
        selection = self.selection or ("attention" if cfg.has_hd else "none")
        if selection not in SELECTIONS:
            raise FlexEvalError(f"unknown selection '{selection}'; choose one of {', '.join(SELECTIONS)}")
        if not cfg.has_hd and selection != "none":
            raise FlexEvalError(
                f"selection '{selection}' needs a FlexAttention checkpoint (k_proj_hd/v_proj_hd); this "
                f"{cfg.format} checkpoint is plain LLaVA-1.5: use --selection none"
            )
        if self.zoom is not None and self.zoom not in (2, 3, 4):
            raise FlexEvalError(f"zoom ratio {self.zoom} is not supported; choose 2, 3 or 4 (672/1008/1344 px)")
        if self.first_hd_layer is not None and not 1 <= self.first_hd_layer <= cfg.num_layers - 1:
            raise FlexEvalError(
                f"--first-layer {self.first_hd_layer} is out of range; the model has layers 0..{cfg.num_layers - 1} "
                "and the first high-res layer needs a layer before it to select from"
            )
        if self.threshold is not None and not 0 <= self.threshold < 255:
            raise FlexEvalError(f"threshold {self.threshold} is out of range; it is out of 255 (release: 48)")
        zoom = self.zoom or cfg.zoom_ratio
        return ResolvedOptions(
            selection=selection,
            threshold=cfg.threshold if self.threshold is None else float(self.threshold),
            select_layer=cfg.first_select_layer if self.first_hd_layer is None else self.first_hd_layer - 1,
            zoom=zoom, highres_size=cfg.lowres_size * zoom, lowres_size=cfg.lowres_size,
            random_ratio=self.random_ratio, seed=self.seed,
        )


@dataclass(frozen=True)
class ResolvedOptions:
    """The effective values of a run, built once by `RunOptions.resolve` (recorded in run.json)."""

    selection: str  # attention | random | center | all | none
    threshold: float  # out of 255
    select_layer: int  # S: the layer that makes the first selection; layers > S use high-res keys
    zoom: int
    highres_size: int  # px of the high-res view (lowres_size * zoom)
    lowres_size: int
    random_ratio: float
    seed: int

    @property
    def use_hd(self) -> bool:
        return self.selection != "none"

    def to_dict(self) -> dict:
        return asdict(self)
