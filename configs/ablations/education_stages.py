"""Ablation: which education-stage prompts the KD data and the synthetic corpus use.

Each run restricts both the teacher's prompts (`distill.levels`) and the synthesizer's
(`synthesize.levels`) to a subset of the eight stages; the last run is the recipe (all eight).
"""

SCHOOL = ["grade_school", "middle_school", "high_school"]
COLLEGE = ["college"]
COMPETITION = ["amc8", "amc10", "amc12", "aime"]

SWEEP = [
    {"distill.levels": levels, "synthesize.levels": levels}
    for levels in (SCHOOL, SCHOOL + COLLEGE, COMPETITION, SCHOOL + COLLEGE + COMPETITION)
]
