"""Seeds put straight into a trainer's model in a given stage, through the events the lifecycle would accept
(`Trainer.realize`), for tests of what a training step does with them."""

from esper.leyline.events import SeedGerminated, SeedTransitioned

STEPS = (("DORMANT", "GERMINATED", "germinate"), ("GERMINATED", "TRAINING", "start_training"),
         ("TRAINING", "BLENDING", "advance"))


def plant(trainer, seed_id: str, slot: str, blueprint: str, stage: str = "TRAINING") -> None:
    """Germinate a `blueprint` seed in `slot` and carry it to `stage` (GERMINATED, TRAINING or BLENDING)."""
    size = trainer.model.seed_sizes()[slot][blueprint]
    trainer.realize(SeedGerminated(epoch=1, seed_id=seed_id, slot=slot, blueprint=blueprint, params=size))
    for before, after, trigger in STEPS:
        trainer.realize(SeedTransitioned(epoch=1, seed_id=seed_id, slot=slot, from_stage=before, to_stage=after,
                                         trigger=trigger))
        if after == stage:
            return
