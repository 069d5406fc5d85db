"""From a DataConfig to batches: which data set (survey_data), then reading it as the input plan
says (read_data; the plan is vitkit.plan's), split and fed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torchvision.transforms import v2

from ..multilabel import is_multilabel
from ..notices import check_ranges, is_number, one_line
from .arrays import (
    ImageArrays,
    load_cifar,
    load_cifar_test,
    load_digits,
    load_mnist,
    load_mnist_test,
    stratified_split,
)
from .augment import AugmentConfig
from .folder import (
    FolderIndex,
    StreamingFolder,
    load_folder_cached,
    probe,
    readable_only,
    scan_folder,
    split_folders,
)
from .inputs import CACHE_BUDGET_GB, InputPlan, ModelGeometry, Survey, cache_bytes, should_cache
from .preprocess import RESIZE_MODES, InputSpec, fit
from .tables import labelled_metadata, metadata_table, read_label_table


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped."""

    dataset: Literal["digits", "folder", "csv", "hf", "cifar10", "cifar100", "mnist", "fashion-mnist",
                     "shards"] = "digits"
    path: str | None = None  # the folder, the directory of CIFAR / MNIST files, or shards (dir, URL);
    # csv: a .csv/.tsv/.jsonl table of image paths and labels; hf: a parquet file or glob, a
    # save_to_disk folder or a Hub dataset id
    val_path: str | None = None  # a separate validation folder (table, parquet); else split off val_split
    val_split: float = 0.1
    image_column: str | None = None  # csv, hf, folder metadata: the image column (default: detected)
    label_column: str | None = None  # csv, hf, folder metadata: the label column (default: detected)
    train_split: str = "train"  # hf: the split to train on, of a source with named splits
    val_split_name: str | None = None  # hf: the validation split (default: validation, valid, val or
    # test, the first there; else val_split of the training split)
    subset: str | None = None  # hf: the configuration (subset) of a Hub dataset that has several
    image_size: int | tuple[int, int] | None = None  # one side, or (h, w); default: the data's own
    # size up to 64 px, moved to the nearest size the default patch size divides when it has no
    # fitting divisor (31 -> 30); photos: vitkit.plan.PHOTO_SIZE
    channels: int | None = None  # default: 1 if every image is grayscale, else 3
    # how images of another shape meet image_size (kept with the model, so predict and serve
    # read images as training did): squash the whole image; crop: scale to cover, centre crop;
    # keep: the aspect ratio, at most image_size's patch count (batches of one size each);
    # auto: crop for photos, squash for small images (vitkit.plan.resolve_resize)
    resize: Literal["auto", "squash", "crop", "keep"] = "auto"
    per_class: int | None = None  # keep at most this many training images per class
    val_per_class: int | None = None
    cache: Literal["auto", "always", "never"] = "auto"  # auto: decoded once when within cache_gb
    cache_gb: float = CACHE_BUDGET_GB  # memory the decoded uint8 images may take (auto cache)
    cache_dir: str | None = None
    workers: int = 2
    seed: int = 0  # fixes the train/val split
    mean: list[float] | None = None  # normalization; default: measured on the training images
    std: list[float] | None = None

    def validate(self) -> None:
        """Refuse data settings outside their range, naming the option, before anything is read."""
        def optional(name: str, ok, rule: str) -> tuple:
            v = getattr(self, name)
            return name, v, v is None or ok(v), rule

        def positive_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def stats(v) -> bool:
            return len(v) in (1, 3) and all(is_number(x) for x in v)

        check_ranges("data", [
            ("val_split", self.val_split, is_number(self.val_split) and 0 < self.val_split < 1,
             "in (0, 1) (a fraction of the training images)"),
            optional("image_size", lambda v: positive_int(v) or (
                isinstance(v, list | tuple) and len(v) == 2 and all(positive_int(x) for x in v)),
                "1 or more pixels, or a pair [h, w] of them"),
            optional("channels", lambda v: v in (1, 3), "1 or 3"),
            ("resize", self.resize, self.resize in ("auto", *RESIZE_MODES),
             " | ".join(("auto", *RESIZE_MODES))),
            optional("per_class", positive_int, "1 or more"),
            optional("val_per_class", positive_int, "1 or more"),
            ("cache_gb", self.cache_gb, is_number(self.cache_gb) and self.cache_gb >= 0, ">= 0"),
            ("workers", self.workers, isinstance(self.workers, int) and self.workers >= 0, "0 or more"),
            ("seed", self.seed, isinstance(self.seed, int) and self.seed >= 0, "0 or more"),
            optional("mean", stats, "one number per channel (1 or 3)"),
            optional("std", lambda v: stats(v) and all(x > 0 for x in v),
                     "one number > 0 per channel (1 or 3)"),
        ])


@dataclass
class Data:
    train: ImageArrays | StreamingFolder
    val: ImageArrays | StreamingFolder
    classes: list[str]
    spec: InputSpec
    notes: list[str]
    cropped: bool = False  # streamed training images got their random resized crop on decoding
    augment: AugmentConfig | None = None  # the augmentation with its "auto" values settled
    geometry: ModelGeometry | None = None  # patch and stem a model built for the data takes
    photos: bool = False  # natural images larger than the small-image sizes (vitkit.plan.is_photo)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ImageArrays)

    def batch_augment(self, augment: AugmentConfig) -> AugmentConfig:
        """What runs on whole batches: the settled augmentation, less a crop taken on decoding."""
        aug = self.augment or augment
        return replace(aug, crop="none") if self.cropped else aug

    def require_labels(self, where: str, purpose: str, hint: str = "") -> None:
        require_labels(self.classes, where, purpose, hint)


def require_labels(classes: list[str], where: str, purpose: str, hint: str = "") -> None:
    """Refuse data of fewer than two classes for anything that learns or measures labels: one
    class trains a model that is always right and measures nothing."""
    if len(classes) < 2:
        names = f" ({', '.join(classes)})" if classes else ""
        raise ValueError(f"{where}: {len(classes)} class{names}; {purpose} needs labelled images "
                         f"of at least two classes (root/<class>/ folders){hint}")


def _channel_stats(a: ImageArrays) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to about 5,000 of) the training images' own pixels."""
    sample = a.subset(torch.arange(0, len(a), max(1, len(a) // 5000)))
    pixels = torch.cat([sample.batch(idx, size)[0].float().flatten(2).permute(1, 0, 2).flatten(1)
                        for size, idx in sample.groups()], dim=1) / 255.0
    mean, std = pixels.mean(dim=1), pixels.std(dim=1).clamp(min=1e-3)
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def _resize_arrays(a: ImageArrays, size: tuple[int, int]) -> ImageArrays:
    if tuple(a.images.shape[-2:]) == size:
        return a
    x = torch.nn.functional.interpolate(a.images.float(), size=size, mode="bicubic", antialias=True)
    return ImageArrays(x.round().clamp(0, 255).to(torch.uint8), a.labels, a.classes)


def _to_channels(a: ImageArrays, channels: int) -> ImageArrays:
    c = a.images.shape[1]
    if c == channels:
        return a
    if channels == 3 and c == 1:
        return ImageArrays(a.images.expand(-1, 3, -1, -1).contiguous(), a.labels, a.classes)
    if channels == 1 and c == 3:  # ITU-R 601 luma, as PIL's "L" conversion
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        y = (a.images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        return ImageArrays(y, a.labels, a.classes)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def survey_data(cfg: DataConfig) -> Survey:
    """What the configured data set is, read before anything is decided: its source opened once
    (arrays read, folders and tables indexed, shards opened), the most common size and channels
    of its images, its classes and counts. vitkit.plan.plan_input decides from it."""
    if cfg.dataset in ("folder", "csv", "hf"):
        index, val_index, path, notes = _indexes(cfg)
        own, channels = _probe(index)
        return Survey(cfg.dataset, own, channels, True, list(index.classes), len(index.labels),
                      len(val_index.labels) if val_index is not None else 0, is_multilabel(index),
                      (index, val_index, path), tuple(notes))
    if cfg.dataset == "shards":
        from .shards import open_shards, probe_shards

        if not cfg.path or not cfg.val_path:
            raise ValueError("dataset 'shards' needs --data.path and --data.val_path (shard directories or "
                             "URL prefixes holding index.json; write them with `vitkit shards`)")
        train, val = open_shards(cfg.path), open_shards(cfg.val_path)
        if val.classes != train.classes:
            raise ValueError(f"{cfg.val_path}: its classes differ from those of {cfg.path}")
        own, channels = probe_shards(train)
        return Survey("shards", own, channels, True, list(train.classes), train.total, val.total,
                      is_multilabel(train), (train, val))
    if cfg.dataset == "digits":
        train, val = load_digits(seed=cfg.seed)
    else:
        if not cfg.path:
            raise ValueError(f"dataset {cfg.dataset!r} needs --data.path (a local directory)")
        if cfg.dataset in ("cifar10", "cifar100"):
            train, val = load_cifar(cfg.path)
        else:
            train, val = load_mnist(cfg.path, fashion=cfg.dataset == "fashion-mnist")
    own = (int(train.images.shape[-2]), int(train.images.shape[-1]))
    return Survey(cfg.dataset, own, int(train.images.shape[1]), cfg.dataset.startswith("cifar"),
                  list(train.classes), len(train), len(val), is_multilabel(train), (train, val))


def read_data(cfg: DataConfig, plan: InputPlan) -> Data:
    """Read the surveyed data as the plan says (vitkit.plan.plan_input; vitkit.plan.load_data
    plans and reads in one call): at its size and channels, resized by its mode, decoded once
    into memory or streamed, normalized by the given statistics or those measured here.

    Streamed training images with a random resized crop (plan.augment.crop "resized") get it
    from the decoded full-size image in the DataLoader worker (Data.cropped is then True);
    every other augmentation runs on whole batches, for streamed and cached data alike.
    """
    kind = plan.survey.dataset
    if kind in ("folder", "csv", "hf"):
        return _read_index(cfg, plan)
    if kind == "shards":
        return _read_shards(cfg, plan)
    train, val = plan.survey.source
    channels, size = plan.channels, plan.image_size
    notes = list(plan.notes)
    train, val = (_resize_arrays(_to_channels(a, channels), size) for a in (train, val))
    return _with_plan(_finish(cfg, train, val, plan, notes), plan)


def _with_plan(data: Data, plan: InputPlan) -> Data:
    return replace(data, augment=plan.augment, geometry=plan.model, photos=plan.photos)


def _finish(cfg: DataConfig, train: ImageArrays, val: ImageArrays, plan: InputPlan, notes: list[str]) -> Data:
    channels, size, patch = plan.channels, plan.image_size, plan.patch
    if cfg.per_class:
        train = train.per_class(cfg.per_class, cfg.seed)
    if cfg.val_per_class:
        val = val.per_class(cfg.val_per_class, cfg.seed)
    mean, std = (plan.mean, plan.std) if plan.mean is not None else _channel_stats(train)
    notes.append(f"{len(train)} training and {len(val)} validation images, {len(train.classes)} classes, "
                 f"{channels}x{size[0]}x{size[1]}")
    if train.sizes is not None:
        notes[-1] += f", {len(train.groups())} sizes of at most {_patches(size, patch)} patches (aspect kept)"
    spec = InputSpec(size, channels, mean, std, resize=plan.resize, patch=patch)
    return Data(train, val, train.classes, spec, notes)


def _patches(size: tuple[int, int], patch: int) -> int:
    return (size[0] // patch) * (size[1] // patch)


@dataclass
class _Streamed:
    """How streamed training images are decoded: a random resized crop from the full-size image
    (crop="resized"), else the whole image resized to size, as for cached data. Validation images
    are always decoded the way prediction reads them (the spec: whole image resized to size), so
    the accuracy printed during training is the one `vitkit evaluate` reports."""

    train_tf: v2.Transform | None
    spec: InputSpec

    @property
    def cropped(self) -> bool:
        return self.train_tf is not None

    @property
    def train_size(self) -> tuple[int, int] | None:
        """The size training images are decoded at: none when the crop makes it."""
        return None if self.cropped else self.spec.fit


def _streaming(plan: InputPlan) -> _Streamed:
    augment, size, channels = plan.augment, plan.image_size, plan.channels
    crop = augment is not None and augment.crop == "resized"
    train_tf = v2.RandomResizedCrop(size, scale=(augment.scale_min, 1.0), antialias=True) if crop else None
    spec = InputSpec(size, channels, list(plan.mean or [0.5] * channels), list(plan.std or [0.5] * channels),
                     resize=plan.resize, patch=plan.patch)
    return _Streamed(train_tf, spec)


NEEDS_PATH = {
    "folder": "dataset 'folder' needs --data.path (root/<class>/<image>)",
    "csv": "dataset 'csv' needs --data.path (a .csv, .tsv or .jsonl table of image paths and labels)",
    "hf": "dataset 'hf' needs --data.path (a parquet file or glob, a save_to_disk folder, a Hub dataset id)",
}


def _folder_index(root: str | Path, cfg: DataConfig, classes: list[str] | None = None,
                  classes_of: str = "the model", notes: list[str] | None = None) -> FolderIndex:
    """root/<class>/<image>, or, when root holds an imagefolder metadata.csv / metadata.jsonl with a
    label column, the images and labels that table names."""
    table = labelled_metadata(root, cfg.label_column) if Path(root).is_dir() else None
    if table is None:
        return scan_folder(root, classes, classes_of)
    if notes is not None:
        notes.append(f"{one_line(root)}: labels from {one_line(table.name)}, not class folders")
    return read_label_table(table, cfg.image_column, cfg.label_column, classes, classes_of)


def _table_index(path: str | Path, cfg: DataConfig, classes: list[str] | None = None,
                 classes_of: str = "the model") -> FolderIndex:
    """The images and labels of a label table; a folder stands for its metadata file."""
    table = metadata_table(path) if Path(path).is_dir() else Path(path)
    if table is None:
        raise ValueError(f"{one_line(path)}: a folder without metadata.csv or metadata.jsonl; dataset 'csv' "
                         "reads a .csv, .tsv or .jsonl table of image paths and labels")
    return read_label_table(table, cfg.image_column, cfg.label_column, classes, classes_of)


def _indexes(cfg: DataConfig) -> tuple:
    """(training index, validation index or None, the training images' path, notes) of a folder,
    label table or Hub-style data set."""
    if not cfg.path:
        raise ValueError(NEEDS_PATH[cfg.dataset])
    if cfg.dataset == "hf":
        from .hf import train_and_val

        index, val_index, notes = train_and_val(cfg)
        return index, val_index, cfg.path, notes
    if cfg.dataset == "csv":
        index = _table_index(cfg.path, cfg)
        val_index = _table_index(cfg.val_path, cfg, index.classes, str(cfg.path)) if cfg.val_path else None
        return index, val_index, cfg.path, []
    notes: list[str] = []
    splits = None if cfg.val_path else split_folders(cfg.path)
    if splits is not None:
        train_dir, val_dir = splits
        notes.append(f"{one_line(cfg.path)}: split folders: training images from {one_line(train_dir)}, "
                     + (f"validation from {one_line(val_dir)}" if val_dir else
                        f"validation split off ({cfg.val_split:.0%})"))
        cfg = replace(cfg, path=str(train_dir), val_path=str(val_dir) if val_dir else None)
    index = _folder_index(cfg.path, cfg, notes=notes)
    val_index = (_folder_index(cfg.val_path, cfg, index.classes, classes_of=str(cfg.path), notes=notes)
                 if cfg.val_path else None)
    return index, val_index, cfg.path, notes


def _probe(index) -> tuple[tuple[int, int], int]:
    from .hf import probe_table

    return probe(index) if isinstance(index, FolderIndex) else probe_table(index)


def _cached(cfg: DataConfig, index, channels: int, size: tuple[int, int]) -> ImageArrays:
    """Every image of a folder or table index decoded once, from the cache when it is there."""
    from .hf import load_table_cached

    load = load_folder_cached if isinstance(index, FolderIndex) else load_table_cached
    return load(index, channels, size, cfg.cache_dir, cfg.workers)


def _streamed(cfg: DataConfig, index, channels: int, transform=None, size: tuple[int, int] | None = None):
    """A Dataset decoding the images of a folder or table index as they are asked for."""
    from .hf import StreamingTable, streamable

    if isinstance(index, FolderIndex):
        return StreamingFolder(index, channels, transform, size)
    return StreamingTable(streamable(index, cfg.cache_dir), channels, transform, size)


def _readable_only(cfg: DataConfig, index):
    from .hf import readable_only as readable_rows

    return readable_only(index, cfg.workers) if isinstance(index, FolderIndex) else \
        readable_rows(index, cfg.workers)


def _read_index(cfg: DataConfig, plan: InputPlan) -> Data:
    """Data from a folder or table index (and a validation one, else the stratified split):
    decoded once into the cache when the plan says so, else streamed."""
    index, val_index, path = plan.survey.source
    cfg = replace(cfg, path=str(path))
    channels, size, train_size, resize = plan.channels, plan.image_size, plan.train_size, plan.resize
    notes = [*plan.survey.notes, *plan.notes]
    if plan.cache:
        if val_index is None and train_size != size:  # split first: each part at its own size
            val_index, index = _split_index(cfg, index, notes)
        if val_index is not None:
            train = _cached(cfg, index, channels, fit(train_size, resize, plan.patch))
            val = _cached(cfg, val_index, channels, fit(size, resize, plan.patch))
        else:
            train = _cached(cfg, index, channels, fit(size, resize, plan.patch))
            tr, va = stratified_split(train.labels.numpy(), cfg.val_split, cfg.seed)
            train, val = train.subset(tr), train.subset(va)
            notes.append(f"validation: {cfg.val_split:.0%} of {cfg.path}, stratified, seed {cfg.seed}")
        data = _finish(cfg, train, val, plan, notes)
        if train_size != size:
            notes[-1] += f" (training images cached at {train_size[0]}x{train_size[1]} for the crops)"
        return _with_plan(data, plan)
    # too many to keep decoded: images stream through DataLoader workers
    if val_index is None:
        val_index, index = _split_index(cfg, index, None)
    st = _streaming(plan)
    n_train, n_val = len(index.labels), len(val_index.labels)
    nbytes = cache_bytes(n_train + n_val, channels, size)
    notes.append(f"{n_train} training and {n_val} validation images streamed "
                 f"({nbytes / 2**30:.1f} GiB decoded > --data.cache_gb {cfg.cache_gb:g}), "
                 f"{len(index.classes)} classes, {channels}x{size[0]}x{size[1]}"
                 if cfg.cache == "auto" else
                 f"{n_train} training and {n_val} validation images streamed, "
                 f"{len(index.classes)} classes, {channels}x{size[0]}x{size[1]}")
    return _with_plan(Data(_streamed(cfg, index, channels, st.train_tf, st.train_size),
                           _streamed(cfg, val_index, channels, size=st.spec.fit), index.classes, st.spec,
                           notes, st.cropped), plan)


def _split_index(cfg: DataConfig, index, notes: list[str] | None):
    """(validation, training) parts of a folder index: the stratified split of the labels."""
    import numpy as np

    tr, va = stratified_split(np.array(index.labels), cfg.val_split, cfg.seed)
    if notes is not None:
        notes.append(f"validation: {cfg.val_split:.0%} of {cfg.path}, stratified, seed {cfg.seed}")
    return _sub_index(index, va), _sub_index(index, tr)


def _read_shards(cfg: DataConfig, plan: InputPlan) -> Data:
    """WebDataset-style tar shards (vitkit.data.shards), streamed through DataLoader workers."""
    from .shards import ShardStream

    train, val = plan.survey.source
    channels, size = plan.channels, plan.image_size
    st = _streaming(plan)
    notes = [*plan.notes, f"{train.total} training images in {len(train.names)} shards and {val.total} "
             f"validation images streamed, {len(train.classes)} classes, {channels}x{size[0]}x{size[1]}"]
    return _with_plan(Data(ShardStream(train, channels, st.train_size, transform=st.train_tf, seed=cfg.seed),
                           ShardStream(val, channels, st.spec.fit, train=False), train.classes, st.spec,
                           notes, st.cropped), plan)


def _sub_index(index, keep):
    if not isinstance(index, FolderIndex):
        return index.subset(keep)
    return FolderIndex(index.root, [index.paths[i] for i in keep], [index.labels[i] for i in keep],
                       index.classes)


@dataclass
class EvalData:
    """Every image to evaluate a model on, labelled with the model's class indices."""

    images: ImageArrays | StreamingFolder  # uint8 at the model's size and channels
    classes: list[str]  # the model's classes
    count: int  # how many images are evaluated
    description: str  # one line: what was read and how


def _preview(names: list[str]) -> str:
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")


def _present(labels: list) -> int:
    """How many classes (tags) occur among labels: class indices, or multi-hot rows."""
    if labels and isinstance(labels[0], list | tuple):
        return sum(1 for k in range(len(labels[0])) if any(row[k] for row in labels))
    return len(set(labels))


def _onto_classes(a: ImageArrays, classes: list[str], source: str) -> ImageArrays:
    """Relabel by class name onto `classes`; a class present in the data but unknown there is an error."""
    if list(a.classes) == list(classes):
        return a
    index = {c: i for i, c in enumerate(classes)}
    if a.labels.ndim == 2:  # multi-hot: columns moved by tag name
        unknown = [c for k, c in enumerate(a.classes) if c not in index and bool(a.labels[:, k].any())]
        if unknown:
            raise ValueError(f"{source}: label(s) {', '.join(unknown)} not among the model's {len(classes)} "
                             f"labels ({_preview(list(classes))})")
        out = torch.zeros(len(a.labels), len(classes), dtype=a.labels.dtype)
        for k, c in enumerate(a.classes):
            if c in index:
                out[:, index[c]] = a.labels[:, k]
        return ImageArrays(a.images, out, list(classes))
    present = sorted(set(a.labels.tolist()))
    unknown = [a.classes[i] for i in present if a.classes[i] not in index]
    if unknown:
        raise ValueError(f"{source}: class(es) {', '.join(unknown)} not among the model's {len(classes)} "
                         f"classes ({_preview(list(classes))})")
    lut = torch.tensor([index.get(c, -1) for c in a.classes], dtype=torch.long)
    return ImageArrays(a.images, lut[a.labels], list(classes))


def _eval_index(cfg: DataConfig, classes: list[str]):
    """(index, what it is called) of every image to evaluate of a folder, label table or dataset."""
    if cfg.dataset == "hf":
        from .hf import eval_index

        if not cfg.path and not cfg.val_path:
            raise ValueError(NEEDS_PATH["hf"])
        index = eval_index(cfg, classes)
        return index, index.name
    root = cfg.val_path or cfg.path
    if cfg.dataset == "csv":
        if not root:
            raise ValueError(NEEDS_PATH["csv"])
        return _table_index(root, cfg, classes), root
    if not root:
        raise ValueError(NEEDS_PATH["folder"])
    splits = None if cfg.val_path else split_folders(root)
    if splits is not None and splits[1] is not None:  # split folders: the validation one
        root = str(splits[1])
    return _folder_index(root, cfg, classes), root


def load_eval_data(cfg: DataConfig, spec: InputSpec, classes: list[str]) -> EvalData:
    """The images to evaluate a trained model on, prepared to its InputSpec, all of them.

    For "folder", every image under cfg.val_path (else cfg.path, or its val/ when it is split
    into train/ and val/ folders), with no split; for "csv", every row of the table at
    cfg.val_path (else cfg.path); for "hf", every row of the split cfg.val_split_name (else
    the first validation split present, else cfg.train_split; a source without splits: all
    of it). Each image is converted and resized to the spec exactly as for prediction, and
    classes (folders, labels) are matched to the model's classes by name (one the model does
    not know is an error; model classes without images are fine). Unreadable files are
    skipped with a warning naming them. For digits, CIFAR and MNIST: their whole test split,
    converted to the spec.
    cfg.image_size, channels, per_class and val_per_class are not used: nothing is left out.
    """
    size = spec.image_size
    channels = spec.channels
    shape = f"{channels}x{size[0]}x{size[1]}" + (" or fewer patches, aspect kept" if spec.any_size else "")
    classes = list(classes)
    if cfg.dataset in ("folder", "csv", "hf"):
        index, root = _eval_index(cfg, classes)
        listed = len(index.labels)
        if should_cache(cfg.cache, cache_bytes(listed, channels, size), cfg.cache_gb) or spec.any_size:
            images = _cached(cfg, index, channels, spec.fit)
            labels = images.labels.tolist()
        else:
            index = _readable_only(cfg, index)
            images = _streamed(cfg, index, channels, size=spec.fit)
            labels = index.labels
        n = len(images)
        unread = f", {listed - n} unreadable skipped" if listed > n else ""
        description = (f"{n} images of {root}, every one (no split{unread}): {_present(labels)} of the "
                       f"model's {len(classes)} classes, {shape}")
        return EvalData(images, classes, n, description)
    if cfg.dataset == "digits":
        test, name = load_digits(seed=cfg.seed)[1], f"the digits test split (seed {cfg.seed})"
    elif cfg.dataset in ("cifar10", "cifar100", "mnist", "fashion-mnist"):
        if not cfg.path:
            raise ValueError(f"dataset {cfg.dataset!r} needs --data.path (a local directory)")
        if cfg.dataset.startswith("cifar"):
            test = load_cifar_test(cfg.path)
        else:
            test = load_mnist_test(cfg.path, fashion=cfg.dataset == "fashion-mnist")
        name = f"the {cfg.dataset} test set in {cfg.path}"
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    h, w = test.images.shape[-2:]
    test = _onto_classes(test, classes, name)
    test = _resize_arrays(_to_channels(test, channels), size)
    resized = f" (resized from {h}x{w})" if (h, w) != size else ""
    description = (f"{len(test)} images of {name}: {_present(test.labels.tolist())} of the model's "
                   f"{len(classes)} classes, {shape}{resized}")
    return EvalData(test, classes, len(test), description)


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The shuffled order of an epoch: a pure function of (seed, epoch), so a resumed run and
    every distributed rank agree on it without sharing state."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def array_batches(data: ImageArrays, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world: int = 1, start: int = 0, shuffle: bool = True, drop_last: bool = True):
    """Yield (images uint8, labels) batches of one epoch, from batch index `start`.

    batch_size is the global batch; each of `world` ranks takes an equal, disjoint slice.
    Images of sizes of their own (ImageArrays.sizes) come in batches of one size each
    (size_batches).
    """
    n = len(data)
    order = epoch_order(n, epoch, seed) if shuffle else torch.arange(n)
    if data.sizes is not None:
        batches = size_batches(data, order, batch_size, world, epoch, seed, shuffle)
        for size, idx in batches[start:]:
            per_rank = len(idx) // world
            yield data.batch(idx[rank * per_rank:(rank + 1) * per_rank], size)
        return
    per_rank = batch_size // world
    steps = n // batch_size if drop_last else -(-n // batch_size)
    for s in range(start, steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        idx = idx[rank * per_rank:(rank + 1) * per_rank] if world > 1 else idx
        yield data.images[idx], data.labels[idx]


def size_batches(data: ImageArrays, order: torch.Tensor, batch_size: int, world: int = 1, epoch: int = 0,
                 seed: int = 0, shuffle: bool = True) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """The batches of an epoch of images of several sizes: each size's images (in the epoch's
    order) cut into batches of batch_size, the last of each size kept when it has at least one
    image per rank (cut to a multiple of `world`), so no size goes untrained; the batches then
    in a seeded order. How many there are depends on the sizes only, not on the epoch."""
    batches = []
    for size, idx in data.groups(order):
        for i in range(0, len(idx), batch_size):
            chunk = idx[i:i + batch_size]
            if len(chunk) >= world:
                batches.append((size, chunk[:len(chunk) // world * world]))
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def epoch_steps(train, batch_size: int, world: int = 1) -> int:
    """The batches an epoch of `train` makes (drop_last): by size for ImageArrays.sizes."""
    if isinstance(train, ImageArrays) and train.sizes is not None:
        return len(size_batches(train, torch.arange(len(train)), batch_size, world, shuffle=False))
    return num_batches(len(train), batch_size)


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
