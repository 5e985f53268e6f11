"""The training stages of Deep Image Matting, one record each.

The paper trains in three stages: the encoder-decoder on both losses, then the refine head
alone on top of the fixed encoder-decoder, then everything together. Everything a stage
means is in its :class:`Stage` record - what learns, what is frozen, which alpha the loss
sees, the loss itself and where the stage starts from - and the trainer reads nothing else
about stages. Giving stage 2 another loss is one changed line in :data:`STAGES`; a fourth
stage is one new record (``train_encoder_decoder.py --stage 4`` then exists).

Freezing is one mechanism, :meth:`Stage.freeze`: a frozen part gets ``requires_grad=False``,
is left out of the optimiser, and keeps its BatchNorm statistics (:meth:`Stage.train_mode`
puts it in eval mode whenever the model is put in train mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import Tensor, nn

from models.py_loss import DIMLoss


@dataclass(frozen=True, kw_only=True)
class Stage:
    """What one stage trains, on which loss, from where.

    name:          shown in logs
    refine_head:   the model has the refine head
    trains:        the model's children that learn (``encoder``, ``decoder``, ``refine_head``);
                   every other child is frozen
    loss_on:       "raw" (the encoder-decoder's alpha) or "refined" (the refine head's)
    loss:          builds the loss, ``loss(**loss_weights) -> module``; the module maps
                   ``(pred (N, 1, H, W) in [0, 1], label (N, 11, H, W))`` to
                   ``(total, {part name: value})`` (:class:`models.py_loss.DIMLoss`)
    loss_weights:  keyword arguments of ``loss``; ``--w-alpha``/``--w-comp`` override them
    starts_from:   the stage whose ``best.pt`` this one starts from; None: ImageNet VGG16-BN
                   weights (or random init)
    """

    name: str
    refine_head: bool
    trains: tuple[str, ...]
    loss_on: str
    loss: Callable[..., nn.Module] = DIMLoss
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    starts_from: int | None = None

    def __post_init__(self):
        if self.loss_on not in ("raw", "refined"):
            raise ValueError(f"loss_on must be 'raw' or 'refined', got {self.loss_on!r}")
        if self.loss_on == "refined" and not self.refine_head:
            raise ValueError("loss_on='refined' needs refine_head=True")
        object.__setattr__(self, "loss_weights", MappingProxyType(dict(self.loss_weights)))

    def build_loss(self, **overrides: float | None) -> nn.Module:
        """The stage's loss; ``overrides`` that are not None replace its weights (ValueError
        for a weight its loss does not have)."""
        weights = dict(self.loss_weights)
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in weights:
                raise ValueError(
                    f"stage {self.name!r}: its loss takes {sorted(weights) or 'no weights'}, "
                    f"not {key}"
                )
            weights[key] = value
        return self.loss(**weights)

    def prediction(self, raw: Tensor, refined: Tensor | None) -> Tensor:
        """The alpha the loss sees."""
        return raw if self.loss_on == "raw" else refined

    def freeze(self, model: nn.Module) -> list[nn.Parameter]:
        """Freeze every child of ``model`` that this stage does not train; return the
        parameters that learn (what the optimiser gets)."""
        children = dict(model.named_children())
        unknown = set(self.trains) - set(children)
        if unknown:
            raise ValueError(f"stage {self.name!r} trains {sorted(unknown)}, which the model lacks")
        for name, child in children.items():
            child.requires_grad_(name in self.trains)
        return [p for p in model.parameters() if p.requires_grad]

    def frozen(self, model: nn.Module) -> Iterator[nn.Module]:
        return (child for name, child in model.named_children() if name not in self.trains)

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()``, except that frozen parts stay in eval mode: their BatchNorm
        statistics must not move either."""
        model.train()
        for child in self.frozen(model):
            child.eval()


PAPER_WEIGHTS = {"w_alpha": 0.5, "w_comp": 0.5}  # the paper's equal mix of the two losses

STAGES: dict[int, Stage] = {
    1: Stage(
        name="encoder-decoder",
        refine_head=False,
        trains=("encoder", "decoder"),
        loss_on="raw",
        loss_weights=PAPER_WEIGHTS,
        starts_from=None,
    ),
    2: Stage(
        name="refine head",
        refine_head=True,
        trains=("refine_head",),
        loss_on="refined",
        loss_weights={"w_alpha": 1.0, "w_comp": 0.0},  # the alpha loss alone
        starts_from=1,
    ),
    3: Stage(
        name="joint fine-tuning",
        refine_head=True,
        trains=("encoder", "decoder", "refine_head"),
        loss_on="refined",
        loss_weights=PAPER_WEIGHTS,
        starts_from=2,
    ),
}
