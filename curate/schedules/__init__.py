"""Curriculum schedules built from a difficulty table (`curate schedule`; docs/methods.md).

One file per method, each a frozen config plus pure functions from a polars frame to a list of `Epoch`s:
`spectrum` (SpectrumKD), `srd` (SRD), `l2m` (L2M-KD), `dakd` (DA-KD; `select_epoch` is shared with the trainer),
`baselines` (full, random). `build.build_schedule` reads the table and writes the directory (`manifest`);
`cli.schedule` is the Typer command and `inspect.inspect_schedule` the `curate inspect` view.
Nothing is imported here, so `import syllabus.curate.schedules.cli` stays light.
"""
