"""The trainer runs its steps under the mesh, and runs the program the `compile` stage reports on.

In a subprocess with 8 forced CPU devices (mesh data=2, fsdp=2, tensor=2): the trainer runs two
real steps while JAX dumps the StableHLO of every program it compiles; the dumped train step must
hold the model's activation sharding constraints, and must equal (up to source locations) what
`compile` lowers for the same config through `abstract_train_step` on the same mesh. Lowered
outside the mesh, the same step has no constraints: the check fails if the trainer loses the mesh.
"""

from __future__ import annotations

import json

from helpers import last_json_line, run_in_subprocess

CODE = r"""
import json, logging, re, sys
from pathlib import Path

import jax

dump, stage_dir, data = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_dump_ir_to", str(dump))
jax.config.update("jax_dump_ir_modes", "stablehlo")

from etils import epath

from jz3_jax.config import apply_overrides, build_spec, load_config
from jz3_jax.stages import StageContext
from jz3_jax.train import compile as aot
from jz3_jax.train.spec import TrainSpec
from jz3_jax.train.trainer import Trainer

cfg = apply_overrides(load_config("configs/tiny.py"), [
    f"data.train_path={data}", "data.max_length=48", "train.steps=2", "train.global_batch_size=8",
    "train.export_hf=false", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
trainer = Trainer(build_spec(TrainSpec, cfg), StageContext("sft", epath.Path(stage_dir), logging.getLogger("test")))
trainer.run()

abstract = aot.abstract_train_step(cfg, trainer.mesh, trainer.rules, rows=8)
compiled_stage = abstract.program.lower_train_step(abstract.state, abstract.frozen_state, abstract.batch).as_text()
outside = abstract.program.train_step.lower(abstract.state, abstract.frozen_state, abstract.batch).as_text()


def without_locations(text):
    text = "\n".join(line for line in text.splitlines() if not line.startswith("#loc"))
    return re.sub(r"\s*loc\(#?[^()]*(\([^()]*\))?[^()]*\)", "", text)


ran = [without_locations(p.read_text()) for p in sorted(dump.glob("*jit_train_step*.mlir"))]
print(json.dumps({
    "programs_run": len(ran),
    "constraints_run": ran[0].count("sharding_constraint") if ran else -1,
    "constraints_compile_stage": compiled_stage.count("sharding_constraint"),
    "constraints_outside_mesh": outside.count("sharding_constraint"),
    "same_program": bool(ran) and ran[0] == without_locations(compiled_stage),
}))
"""


def test_trainer_step_has_the_constraints_and_equals_the_compile_stage_program(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"input": f"Q: {i}+{i}=?\nA: ", "output": str(2 * i)}) + "\n"
                            for i in range(32)))
    out = last_json_line(run_in_subprocess(CODE, devices=8, args=[str(tmp_path / "dump"), str(tmp_path / "sft"),
                                                                  str(data)]))
    assert out["programs_run"] == 1  # one train step program, compiled once for both steps
    # per layer: attention q, the residual stream, the MLP hidden; plus embeddings and logits
    assert out["constraints_run"] >= 2 * 3 + 2
    assert out["constraints_outside_mesh"] == 0
    assert out["constraints_compile_stage"] == out["constraints_run"]
    assert out["same_program"]
