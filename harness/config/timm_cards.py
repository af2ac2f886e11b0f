"""Model cards for any timm model, built from timm's own pretrained config (``timm:<name>``)."""

from __future__ import annotations

from harness.config.card_fields import CardError
from harness.config.model_cards import INTERPOLATIONS, ModelCard, Preprocessing, WeightsSpec


def timm_model_card(timm_name: str) -> ModelCard:
    """Build a model card for any timm model from timm's own pretrained config.

    Args:
        timm_name: ``architecture`` or ``architecture.tag`` as timm names it.

    Raises:
        CardError: when timm does not know the name.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name, allow_unregistered=False)
    except Exception as exc:
        raise CardError(f"timm does not know model {timm_name!r}: {exc}") from exc
    if cfg is None:
        raise CardError(f"timm has no pretrained config for {timm_name!r}")
    arch, _, tag = timm_name.partition(".")
    tag = tag or cfg.tag or "default"
    interpolation = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic"
    return ModelCard(
        name=f"{arch}.{tag}",
        library="timm",
        architecture=arch,
        weights=WeightsSpec(source="timm", hub_id=f"{arch}.{tag}"),
        preprocessing=Preprocessing(
            input_size=int(cfg.input_size[-1]),
            mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
            interpolation=interpolation,
            crop_pct=float(cfg.crop_pct or 0.875),
        ),
        category="supervised",
        pretraining_data=str(tag),
        paper=str(cfg.paper_ids or ""),
        license=str(cfg.license or ""),
        source_file=f"timm pretrained_cfg {timm_name}",
    )
