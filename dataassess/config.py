"""One config model. Precedence: explicit values > DATAASSESS_* env > dataassess.toml > defaults.

Nested fields use `__` in env names, e.g. DATAASSESS_TRAIN__LR=1e-4.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import UserError
from .files import digest_json

ENV_PREFIX = "DATAASSESS_"


class Section(BaseModel):
    """A config section: unknown keys are errors; digest() keys what it changes in the store."""

    model_config = ConfigDict(extra="forbid")

    def digest(self) -> str:
        return digest_json(self.model_dump(mode="json"))[:16]


class TinySeedConfig(Section):
    """The built-in `tiny` seed: a small model and a byte-level BPE trained here."""

    arch: Literal["gpt2", "llama"] = "gpt2"  # the architecture built from its config
    n_layer: int = Field(2, ge=1)  # transformer blocks
    n_embd: int = Field(128, ge=8)  # hidden width
    n_head: int = Field(4, ge=1)  # attention heads
    vocab_size: int = Field(8192, ge=256)  # of the byte-level BPE trained on the seed text
    tokens: int = Field(1_000_000, gt=0)  # pretraining token budget on the seed text
    lr: float = Field(2e-3, gt=0)  # peak pretraining learning rate (cosine to min_lr)
    min_lr: float = Field(2e-4, ge=0)  # final pretraining learning rate
    warmup_steps: int = Field(20, ge=0)  # linear warm-up steps of pretraining
    text: str | None = None  # seed text file/dir; None = the bundled FOLDOC cut

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> TinySeedConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class CorpusConfig(Section):
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # documents held out of training as evaluation text
    eval_max_tokens: int = Field(8192, gt=0)  # scored tokens per evaluation set (a task set: its gold answers)
    eval_group: Literal["domain", "partition"] = "domain"  # held-out docs grouped by `domain` field or partition
    partition_field: str = "domain"  # when the corpus is one dataset (file or hub id) instead of a folder
    min_tokens: int = Field(2048, ge=0)  # a partition with fewer training tokens is quarantined


class UnitConfig(Section):
    tokens: int = Field(65_536, gt=0)  # every unit holds exactly this many training tokens


BUILT_SEED_LR, IMPORTED_SEED_LR = 5e-4, 1e-4  # train.lr when unset (TrainConfig.for_seed)


class TrainConfig(Section):
    """Continued pretraining of the seed, for unit models and ground truths alike. Part of every model's key."""

    lr: float | None = Field(None, gt=0)  # AdamW rate; None: 5e-4 for a seed built here, 1e-4 for an imported one
    schedule: Literal["constant", "linear"] = "constant"  # constant, or linear: from lr down to lr / steps
    weight_decay: float = Field(0.1, ge=0)  # AdamW weight decay
    beta1: float = Field(0.9, ge=0, lt=1)  # AdamW beta1
    beta2: float = Field(0.95, ge=0, lt=1)  # AdamW beta2
    grad_clip: float = Field(1.0, gt=0)  # gradient-norm clip
    seq_len: int = Field(256, ge=2)  # tokens per training sequence (and evaluation window, at most)
    batch_tokens: int = Field(4096, gt=0)  # tokens per optimizer step; gradient accumulation reaches it
    micro_batch: int = Field(16, ge=1)  # sequences per forward pass
    seed: int = 0  # data order and initialization seed of unit training

    def digest(self) -> str:
        """A constant rate keys models as it did before `schedule` existed: stores trained then stay valid."""
        dropped = {"schedule"} if self.schedule == "constant" else None
        return digest_json(self.model_dump(mode="json", exclude=dropped))[:16]

    def for_seed(self, imported: bool) -> TrainConfig:
        """The config with its learning rate set: a seed built here (tiny) was pretrained by us at a known rate; a
        seed pretrained elsewhere (a hub model, GGUF) has left its pretraining schedule, and 1e-4 moves it without
        undoing it. The unit models' loss checks (dataassess/steps.py) say when a rate diverges or does nothing."""
        if self.lr is not None:
            return self
        return self.model_copy(update={"lr": IMPORTED_SEED_LR if imported else BUILT_SEED_LR})


class ScoreConfig(Section):
    batch_size: int = Field(16, ge=1)  # evaluation windows per forward pass
    stride: int | None = Field(None, gt=0)  # rolling-window stride; None = half the context


class RankConfig(Section):
    # what a score answers (dataassess/budgets.py): fixed = every mixture trained on the same B tokens; union = on
    # all of its units (k x the tokens), predicted by a calibration fitted by `dataassess fidelity --budget union`
    budget: Literal["fixed", "union"] = "fixed"  # what a score answers (see above)
    budget_tokens: int | None = Field(None, gt=0)  # the fixed budget B; None = units.tokens
    k_max: int = Field(2, ge=1)  # largest mixture size ranked
    mixtures: list[list[str]] | None = None  # explicit candidates; None = all subsets of 1..k_max units
    by: str = "macro"  # an evaluation set, a task family, "macro" (geometric mean of perplexities) or "z_macro"
    weighting: Literal["uniform", "tokens"] = "uniform"  # a mixture's units merged evenly or by distinct tokens
    # staged screening (successive halving): score all mixtures on 1/25 of each evaluation set,
    # keep the best 1/eta (at least screen_keep) for an eta-times larger slice, then the survivors on the full sets;
    # three rungs cost about 3/25 + screen_keep/mixtures of scoring everything in full
    screen: bool = False  # staged screening (see above)
    screen_eta: int = Field(5, ge=2)  # each rung keeps 1/eta of the mixtures on an eta-times larger slice
    screen_min_fraction: float = Field(1 / 25, gt=0.0, le=1.0)  # the first rung's slice of each set
    screen_keep: int = Field(10, ge=1)  # the top screen_keep mixtures always get full-set scores
    # a scoring pass whose mixtures without full-set scores (new or changed units) outnumber max_full_scores screens
    # them as above and scores in full only max_full_scores of them; mixtures scored before keep their scores
    max_full_scores: int | None = Field(400, ge=1)  # None: every new mixture scored in full
    # which candidates are scored: all of them, or a surrogate-guided search (dataassess/subsets.py) that scores
    # every single unit and guided_initial mixtures, then guided_round more per round, the most promising by a
    # surrogate, for at most guided_rounds rounds; only the mixtures it scored are ranked
    search: Literal["exhaustive", "guided"] = "exhaustive"  # see above
    guided_initial: int = Field(32, ge=2)  # mixtures scored before the first surrogate fit
    guided_round: int = Field(8, ge=1)  # mixtures scored per round
    guided_rounds: int = Field(4, ge=1)  # rounds at most


class MergeConfig(Section):
    """How unit models are merged into a mixture's proxy: a method of dataassess/merge/ by name, and its parameters
    (unset ones take the method's defaults). Part of every mixture's key."""

    method: str = "norm_matched"  # norm_matched (the average, its length restored), linear, task_arithmetic, ties
    params: dict[str, float] = {}  # e.g. {scale = 0.5} for task_arithmetic, {density = 0.2} for ties


class OptimizeConfig(Section):
    """Mixture weights (`dataassess optimize`): partition shares of the fixed budget, searched over weighted merges."""

    on_intake: bool = True  # every intake re-optimizes after its ranking (warm-started from the last optimum)
    objective: str | dict[str, float] = "macro"  # "macro", a set's name, or {set: weight} (mean of log ppl)
    min_share: float | dict[str, float] = 0.0  # lower bound per partition (one value, or by partition name)
    max_share: float | dict[str, float] = 1.0  # upper bound per partition
    max_epochs: float = Field(4.0, gt=0)  # a partition gets at most max_epochs x its distinct tokens of the budget
    samples: int = Field(48, ge=4)  # the first design: vertices, uniform, natural, then Dirichlet samples...
    samples_per_partition: int = Field(8, ge=0)  # ...at least this many per partition in all
    warm_samples: int = Field(8, ge=0)  # new samples per partition new or changed since the pool's last search
    rounds: int = Field(2, ge=0)  # refits, each sampling round_samples near the surrogate's optimum
    round_samples: int = Field(16, ge=1)  # points sampled near each round's optimum
    concentration: float = Field(40.0, gt=0)  # Dirichlet concentration of the samples near an optimum
    eval_fraction: float = Field(0.25, gt=0.0, le=1.0)  # slice of each evaluation set the search scores on
    surrogate: Literal["auto", "loglinear", "quadratic", "trees"] = "auto"  # auto: best cross-validated Spearman
    seed: int = 0  # the search's random seed


class FidelityConfig(Section):
    """Ground truths of `dataassess fidelity`: the seed really trained on sampled mixtures, with the unit models'
    hyperparameters but data orders of their own, so that no truth is ever a unit model."""

    data_seed: int = 1000  # the truths' data order (the replicates' is data_seed + 1); must differ from train.seed
    mixtures: int = Field(24, ge=3)  # mixtures sampled, k = 1..k_max, stratified by size
    k_max: int = Field(3, ge=1)  # largest mixture size sampled
    replicates: int = Field(8, ge=0)  # mixtures (every size represented) given a second truth: the noise model
    bootstrap: int = Field(1000, ge=0)  # resamples of the mixtures behind each 95% interval


class RunConfig(Section):
    """Where an intake's work items (unit trainings, mixture scorings) run. Not part of any store key."""

    task_runner: Literal["thread", "dask"] = "thread"  # thread: one at a time in the flow's process
    dask_address: str | None = None  # a running Dask scheduler (tcp://host:port); None = a local cluster
    dask_workers: int = Field(2, ge=1)  # worker processes of the local cluster, one thread each
    api_restarts: int = Field(3, ge=0)  # times a command restarts its embedded Prefect API server if it exits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DATAASSESS_", env_nested_delimiter="__", toml_file="dataassess.toml", extra="forbid"
    )

    store: Path = Path(".dataassess")  # where data, models, scores and rankings live
    base_model: str = "tiny"  # "tiny", "tiny-llama", an HF model id or a local model folder
    gguf_file: str | None = None  # for a base_model folder holding a GGUF file
    device: str = "auto"  # "auto" = cuda when present, else cpu; or cpu, mps, cuda, cuda:N
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None = torch's default
    tiny: TinySeedConfig = TinySeedConfig()
    corpus: CorpusConfig = CorpusConfig()
    units: UnitConfig = UnitConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    rank: RankConfig = RankConfig()
    merge: MergeConfig = MergeConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    fidelity: FidelityConfig = FidelityConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _truths_have_their_own_data_order(self) -> Settings:
        if self.train.seed in (self.fidelity.data_seed, self.fidelity.data_seed + 1):
            raise ValueError(
                f"fidelity.data_seed ({self.fidelity.data_seed}) and the replicates' data_seed + 1 must differ from "
                f"train.seed ({self.train.seed}): a ground truth trained in a unit model's data order is not "
                "independent of it"
            )
        return self

    @model_validator(mode="after")
    def _budgets_hold_a_sequence(self) -> Settings:
        for key, tokens in (("units.tokens", self.units.tokens), ("rank.budget_tokens", self.rank.budget_tokens)):
            if tokens is not None and tokens < self.train.seq_len:
                raise ValueError(
                    f"{key} = {tokens:,} is less than one training sequence (train.seq_len = {self.train.seq_len})"
                )
        return self

    @field_validator("store")
    @classmethod
    def _store_is_a_folder(cls, v: Path) -> Path:
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} is a file; the store is a folder")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(path: str | Path | None = None, **overrides) -> Settings:
    """Settings from `path` (or $DATAASSESS_CONFIG, or ./dataassess.toml if present), env and overrides.
    Bad values and unknown keys raise one UserError that says where each came from."""
    toml = path or os.environ.get(ENV_PREFIX + "CONFIG") or "dataassess.toml"
    if (path or os.environ.get(ENV_PREFIX + "CONFIG")) and not Path(toml).is_file():
        raise UserError(f"config file not found: {toml}")
    unknown_env = sorted(
        n
        for n in os.environ
        if n.upper().startswith(ENV_PREFIX)
        and n[len(ENV_PREFIX) :].split("__")[0].lower() not in {*Settings.model_fields, "config"}
    )
    if unknown_env:
        raise UserError(
            f"invalid configuration: unknown setting {', '.join(unknown_env)} (from the environment); "
            f"settings are {ENV_PREFIX}<{'|'.join(f.upper() for f in Settings.model_fields)}>[__KEY]"
        )
    reading = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": toml}})
    if Path(toml).is_file():  # each source on its own: a value another source overrides is still checked
        try:
            toml_values = TomlConfigSettingsSource(reading)()
        except ValueError as e:  # tomllib's decode error, or bytes that are not UTF-8
            raise UserError(f"invalid configuration: file {toml} is not valid TOML: {e}") from None
        _check_source(toml_values, lambda loc: f"file {toml}")
    _check_source(EnvSettingsSource(reading)(), _env_names)
    try:
        return Settings.model_validate(reading(**overrides).model_dump())
    except ValidationError as e:
        raise UserError(
            "invalid configuration: " + "; ".join(_describe(err, toml, overrides) for err in e.errors())
        ) from None


def _env_names(loc: tuple[str, ...]) -> str:
    """The environment variables behind a key, or behind a section's rule: every variable set under it."""
    name = ENV_PREFIX + "__".join(loc).upper()
    if len(loc) > 1:
        return f"env {name}"
    names = sorted(n for n in os.environ if n.upper() == name or n.upper().startswith(name + "__"))
    return "env " + (", ".join(names) or name)


def _check_source(values: dict, where) -> None:
    """The values one source gives, each validated against its key's type; unknown keys are left to the merged
    validation, which names them."""
    problems = []
    for key, value in values.items():
        field = Settings.model_fields.get(key)
        if field is None:
            continue
        try:
            TypeAdapter(field.annotation).validate_python(value)
        except ValidationError as e:
            for err in e.errors():
                if err["type"] == "extra_forbidden":
                    continue
                loc = tuple(str(x) for x in (key, *err["loc"]))
                message = err["msg"].removeprefix("Value error, ")
                if err["loc"]:
                    problems.append(f"{'.'.join(loc)} = {err.get('input')!r} (from {where(loc)}): {message}")
                else:  # a rule across the section's keys
                    problems.append(f"[{key}] (from {where(loc)}): {message}")
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def _describe(err: dict, toml: str | Path, overrides: dict) -> str:
    """One validation error as `key = value (from where): what is wrong`, without pydantic's URLs."""
    if not err["loc"]:  # a rule across keys
        return err["msg"].removeprefix("Value error, ")
    loc = tuple(str(x) for x in err["loc"])
    key = ".".join(loc)
    env = ENV_PREFIX + "__".join(loc).upper()
    if loc[0] in overrides:
        where = f"--{loc[0]}"
    elif any(n.upper() == env for n in os.environ) or any(n.upper() == ENV_PREFIX + loc[0].upper() for n in os.environ):
        where = f"env {env}"
    elif Path(toml).is_file():
        where = f"file {toml}"
    else:
        where = "defaults"
    if err["type"] == "extra_forbidden":
        section = Settings.model_fields.get(loc[0]) if len(loc) > 1 else None
        known = (
            sorted(section.annotation.model_fields)
            if section is not None and hasattr(section.annotation, "model_fields")
            else sorted(Settings.model_fields)
        )
        of = f" of [{loc[0]}]" if len(loc) > 1 else ""
        return f"unknown key '{key}' (from {where}); known keys{of}: {', '.join(known)}"
    value = err.get("input")
    shown = f"'{value}'" if isinstance(value, Path) else repr(value)
    return f"{key} = {shown} (from {where}): {err['msg'].removeprefix('Value error, ')}"
