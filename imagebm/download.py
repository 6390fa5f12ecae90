"""Fetch the public image datasets from their publishers, checksum-verified, never half-written.

Each file is streamed into a temporary file beside its destination, hashed on the way, and
renamed into place only when the checksum matches; archives are unpacked into a temporary
folder that is renamed into place whole, and kept beside it. An interrupted or corrupt
download leaves nothing behind. Files already present are verified and skipped; a present
file with the wrong checksum is reported, never overwritten. ``base_url`` (or
``$IMAGEBM_MIRROR``) replaces the publishers' hosts: files are fetched as BASE_URL/FILENAME.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from imagebm.datasets import dataset_spec, default_root, missing_files
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import fsync_dir

MIRROR_ENV = "IMAGEBM_MIRROR"
TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One published file: its URL, checksum ("md5:HEX" or "sha256:HEX"), size, unpacked folder."""

    url: str
    checksum: str
    size: int | None = None
    extract: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"

REGISTRY: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "md5:c58f30108f718f92721af3b95e74349a", 170_498_071, "cifar-10-batches-py"),
    ),
    "mnist": (
        Resource(_MNIST + "train-images-idx3-ubyte.gz",
                 "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
        Resource(_MNIST + "train-labels-idx1-ubyte.gz",
                 "md5:d53e105ee54ea40749a09fcbcd1e9432", 28_881),
        Resource(_MNIST + "t10k-images-idx3-ubyte.gz",
                 "md5:9fb629c4189551a2d022fa330f9573f3", 1_648_877),
        Resource(_MNIST + "t10k-labels-idx1-ubyte.gz",
                 "md5:ec29112dd5afa0611ce80d1b7f02629c", 4_542),
    ),
    "svhn": (
        Resource(_SVHN + "train_32x32.mat", "md5:e26dedcc434d2e4c54c9b2d4a06d8373", 182_040_794),
        Resource(_SVHN + "test_32x32.mat", "md5:eb5a983be6a315427106f1b164d9cef3", 64_275_384),
    ),
    "dtd": (
        Resource("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                 "md5:fff73e5086ae6bdbea199a49dfb8a4c1", 625_239_812, "dtd"),
    ),
    "dsprites": (
        Resource("https://github.com/deepmind/dsprites-dataset/raw/master/"
                 "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                 "md5:7da33b31b13a06f4b04a70402ce90c2e"),
    ),
}


def file_checksum(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_existing(path: Path, res: Resource) -> None:
    """Return if ``path`` matches ``res``'s checksum; else a UsageError (the file is kept)."""
    algorithm, expected = res.checksum.split(":")
    got = file_checksum(path, algorithm)
    if got != expected:
        raise UsageError(f"{path} exists but its {algorithm} is {got}, expected {expected} "
                         f"(from {res.url}); remove it and run again to re-download")


def _fetch(url: str, dest: Path, res: Resource, progress: bool) -> None:
    """Download ``url`` to ``dest`` via a verified temporary file in the same folder."""
    algorithm, expected = res.checksum.split(":")
    digest = hashlib.new(algorithm)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            request = urllib.request.Request(url, headers={"User-Agent": "imagebm-download"})
            received = 0
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tqdm(
                    total=response.length or res.size, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=dest.name, disable=not progress,
                ) as bar:
                    announced = response.length
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                        received += len(chunk)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                raise UsageError(f"cannot download {url}: {err}; nothing was kept") from None
            if announced is not None and received != announced:
                raise UsageError(f"cannot download {url}: the connection ended after {received} "
                                 f"of {announced} bytes; nothing was kept")
            f.flush()
            os.fsync(f.fileno())
        got = digest.hexdigest()
        if got != expected:
            raise UsageError(f"{url}: {algorithm} checksum mismatch: expected {expected}, got "
                             f"{got}; the download was discarded")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unpack(archive: Path, folder: str) -> None:
    """Unpack the tar ``archive`` and move its top folder ``folder`` beside it in one rename."""
    root = archive.parent
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder}.", suffix=".unpack"))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for m in members:
                    parts = PurePosixPath(m.name).parts
                    if (m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir())
                            or parts[:1] != (folder,)):
                        raise UsageError(f"{archive}: unexpected member {m.name!r} (only files "
                                         f"under {folder}/ are unpacked); not unpacking it")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **safe)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise UsageError(f"{archive}: cannot unpack ({err})") from None
        if not (tmp / folder).is_dir():
            raise UsageError(f"{archive}: holds no {folder}/ folder")
        os.rename(tmp / folder, root / folder)
        fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(name: str, root: Path) -> bool:
    return not any(missing_files(name, root, split) for split in dataset_spec(name).splits)


def download(name: str, root: str | os.PathLike | None = None, *, base_url: str | None = None,
             progress: bool = True) -> Path:
    """Fetch dataset ``name`` into ``root`` (default :func:`default_root`); return its folder."""
    spec = dataset_spec(name)
    root = Path(root) if root is not None else default_root()
    folder = root / spec.folder
    if spec.manual:
        if _complete(name, root):
            return folder
        raise UsageError(spec.manual.format(folder=folder))
    if not spec.needs_download:
        return folder
    mirror = base_url or os.environ.get(MIRROR_ENV)
    for res in REGISTRY.get(name, ()):
        url = f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url
        if res.extract:
            if (root / res.extract).exists():
                if _complete(name, root):
                    continue
                missing = [m for s in spec.splits for m in missing_files(name, root, s)]
                raise UsageError(f"{root / res.extract} exists but lacks "
                                 f"{', '.join(dict.fromkeys(missing))}; move it away and run "
                                 f"again")
            archive = root / res.filename
            if archive.exists():
                _check_existing(archive, res)
            else:
                _fetch(url, archive, res, progress)
            _unpack(archive, res.extract)
        else:
            dest = folder / res.filename
            if dest.exists():
                _check_existing(dest, res)
            elif not (dest.suffix == ".gz" and dest.with_suffix("").exists()):
                _fetch(url, dest, res, progress)
    return folder
