"""Training: schedules, optimizer, the jitted train step, checkpointed trainer loop, sft/pretrain stages."""
