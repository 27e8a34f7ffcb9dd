"""A Syllabus curriculum in another trainer: the schedule's epochs as datasets in `train run`'s order, and TRL's
SFTTrainer taking them in that order."""

from __future__ import annotations

import pytest

from helpers import scored_table, short_rows
from syllabus.core.curriculum import curriculum_dataset, epoch_datasets
from syllabus.curate.schedules.build import build_schedule
from syllabus.train.data import epoch_micro_batches


@pytest.fixture(scope="module")
def spectrum(tmp_path_factory, dolly_rows, real_tokenizer_dir):
    root = tmp_path_factory.mktemp("curriculum")
    rows = short_rows(dolly_rows, 16)
    table = scored_table(root, rows, 256, real_tokenizer_dir)
    path, _ = build_schedule(table.path, "spectrum", root / "sched", {"epochs": 4, "warmup_epochs": 1})
    return table, path


def test_each_epoch_is_the_schedules_shard_in_train_runs_order(spectrum):
    import polars as pl

    table, sched = spectrum
    epochs = epoch_datasets(sched, seed=7)
    frame = table.frame
    for k, epoch in enumerate(epochs):
        shard = pl.read_parquet(sched / f"epoch-{k:03d}.parquet")["sample_id"].to_list()
        trained = [sid for batch in epoch_micro_batches(shard, seed=7, epoch=k, micro_batch_size=4) for sid in batch]
        assert epoch["sample_id"] == trained  # what `train run --seed 7` takes, in its order
        assert set(epoch["epoch"]) == {k}
        for row in epoch.select(range(3)):
            source = frame.row(by_predicate=pl.col("sample_id") == row["sample_id"], named=True)
            assert (row["prompt"], row["completion"], row["dds"]) == (source["prompt"], source["response"],
                                                                      source["dds"])
    whole = curriculum_dataset(sched, seed=7)
    assert whole["sample_id"] == [sid for epoch in epochs for sid in epoch["sample_id"]]
    assert len({frozenset(e["sample_id"]) for e in epochs}) > 1  # SpectrumKD's sliding window: other samples


@pytest.mark.slow
def test_trls_sft_trainer_trains_on_the_curriculum_in_its_order(spectrum, tmp_path, tiny_model):
    trl = pytest.importorskip("trl")
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class CurriculumSFTTrainer(trl.SFTTrainer):
        def _get_train_sampler(self, dataset=None):
            return SequentialSampler(dataset if dataset is not None else self.train_dataset)

    _, sched = spectrum
    train = curriculum_dataset(sched)
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, max_steps=3,
                         num_train_epochs=1, learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no",
                         logging_steps=1, max_length=256, bf16=False)
    trainer = CurriculumSFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                                   train_dataset=train, processing_class=AutoTokenizer.from_pretrained(tiny_model))
    first = next(iter(trainer.get_train_dataloader()))
    expected = [trainer.train_dataset[i]["input_ids"] for i in range(2)]  # the curriculum's first two rows
    assert [ids[mask.bool()].tolist() for ids, mask in zip(first["input_ids"], first["attention_mask"])] == expected
    result = trainer.train()
    assert trainer.state.global_step == 3 and result.training_loss > 0
