"""imagebm.download against a local HTTP server: verified, atomic, skip-if-present, no leftovers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from test_image_datasets import write_cifar, write_dsprites

from imagebm import download as dl
from imagebm.cli import main
from imagebm.datasets import DSPRITES_FILE, load_dataset
from trajebm.engine.errors import UsageError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, records request paths, and cuts ``/truncated.tar.gz`` short."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.endswith("/truncated.tar.gz"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\0" * 100)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local server on 127.0.0.1 serving a tiny CIFAR tarball and dSprites file."""
    files = tmp_path_factory.mktemp("served")
    src = tmp_path_factory.mktemp("src")
    write_cifar(src)
    with tarfile.open(files / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    write_dsprites(src)
    (files / DSPRITES_FILE).write_bytes((src / "dsprites" / DSPRITES_FILE).read_bytes())
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (files / "evil.tar.gz").write_bytes(evil.getvalue())
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(files)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, handler.requests
    httpd.shutdown()
    httpd.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def use(monkeypatch, name: str, filename: str, checksum: str, extract: str | None = None) -> None:
    """Point the registry entry of ``name`` at ``filename`` with ``checksum`` (md5)."""
    res = dl.Resource(f"https://publisher.invalid/{filename}", f"md5:{checksum}", None, extract)
    monkeypatch.setitem(dl.REGISTRY, name, (res,))


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


def test_download_verifies_unpacks_and_loads(server, tmp_path, monkeypatch):
    url, files, requests = server
    use(monkeypatch, "cifar10", "cifar-10-python.tar.gz", md5(files / "cifar-10-python.tar.gz"),
        "cifar-10-batches-py")
    folder = dl.download("cifar10", tmp_path, base_url=url + "/", progress=False)
    assert folder == tmp_path / "cifar-10-batches-py"
    assert requests[-1] == "/cifar-10-python.tar.gz"
    data = load_dataset("cifar10", tmp_path)
    assert data.images.shape == (10, 3, 32, 32) and data.num_classes == 10
    assert (tmp_path / "cifar-10-python.tar.gz").is_file() and leftovers(tmp_path) == []
    count = len(requests)
    assert dl.download("cifar10", tmp_path, base_url=url, progress=False) == folder
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    assert dl.download("cifar10", tmp_path, base_url=url, progress=False) == folder
    assert len(requests) == count


def test_checksum_mismatch_keeps_nothing(server, tmp_path, monkeypatch):
    url, files, _ = server
    use(monkeypatch, "cifar10", "cifar-10-python.tar.gz", "0" * 32, "cifar-10-batches-py")
    with pytest.raises(UsageError) as err:
        dl.download("cifar10", tmp_path, base_url=url, progress=False)
    msg = str(err.value)
    assert f"{url}/cifar-10-python.tar.gz" in msg and "checksum mismatch" in msg
    assert f"expected {'0' * 32}, got {md5(files / 'cifar-10-python.tar.gz')}" in msg
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_nothing(server, tmp_path, monkeypatch):
    url, _, _ = server
    use(monkeypatch, "cifar10", "truncated.tar.gz", "0" * 32, "cifar-10-batches-py")
    with pytest.raises(UsageError, match=f"cannot download {url}/truncated.tar.gz"):
        dl.download("cifar10", tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []
    use(monkeypatch, "cifar10", "absent.tar.gz", "0" * 32, "cifar-10-batches-py")
    with pytest.raises(UsageError, match="HTTP Error 404"):
        dl.download("cifar10", tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_present_file_is_verified_and_never_overwritten(server, tmp_path, monkeypatch):
    url, files, requests = server
    use(monkeypatch, "dsprites", DSPRITES_FILE, md5(files / DSPRITES_FILE))
    monkeypatch.setenv(dl.MIRROR_ENV, url)
    folder = dl.download("dsprites", tmp_path, progress=False)
    assert requests[-1] == f"/{DSPRITES_FILE}" and leftovers(tmp_path) == []
    assert load_dataset("dsprites", tmp_path).images.shape == (6, 1, 64, 64)
    count = len(requests)
    assert dl.download("dsprites", tmp_path, progress=False) == folder
    (folder / DSPRITES_FILE).write_bytes(b"my own edits")
    with pytest.raises(UsageError, match="exists but its md5 is .* remove it"):
        dl.download("dsprites", tmp_path, progress=False)
    assert (folder / DSPRITES_FILE).read_bytes() == b"my own edits"
    assert len(requests) == count


def test_unsafe_archive_is_not_unpacked(server, tmp_path, monkeypatch):
    url, files, _ = server
    use(monkeypatch, "dtd", "evil.tar.gz", md5(files / "evil.tar.gz"), "dtd")
    with pytest.raises(UsageError, match="unexpected member '../escaped.txt'"):
        dl.download("dtd", tmp_path / "root", base_url=url, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["evil.tar.gz"]


def test_imagenet32_is_explained_not_fetched(server, tmp_path):
    _, _, requests = server
    count = len(requests)
    with pytest.raises(UsageError) as err:
        dl.download("imagenet32", tmp_path, base_url=server[0], progress=False)
    msg = str(err.value)
    assert "image-net.org/download-images" in msg and "Imagenet32_val_npz.zip" in msg
    assert str(tmp_path / "imagenet32") in msg and len(requests) == count
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        np.savez(folder / name, data=np.zeros((1, 3072), np.uint8), labels=np.ones(1))
    assert dl.download("imagenet32", tmp_path) == folder


def test_registry_is_well_formed():
    for name, resources in dl.REGISTRY.items():
        assert name in ("cifar10", "mnist", "svhn", "dtd", "dsprites")
        for res in resources:
            algorithm, digest = res.checksum.split(":")
            assert algorithm == "md5" and len(digest) == 32 and res.url.startswith("http")
    assert dl.download("digits", progress=False) is not None


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_download_command(server, tmp_path, monkeypatch, capsys):
    url, files, _ = server
    use(monkeypatch, "cifar10", "cifar-10-python.tar.gz", md5(files / "cifar-10-python.tar.gz"),
        "cifar-10-batches-py")
    status, out, _ = run_cli(["download", "cifar10", "--root", str(tmp_path), "--base-url", url,
                              "--quiet"], capsys)
    assert status == 0 and out == f"cifar10 is ready in {tmp_path / 'cifar-10-batches-py'}\n"
    status, _, err = run_cli(["download", "imagenet32", "--root", str(tmp_path)], capsys)
    assert status == 2 and err.startswith("imagebm: error: imagenet32 needs an image-net.org")
    assert err.count("\n") == 1
    status, out, _ = run_cli(["download", "digits"], capsys)
    assert status == 0 and "needs no download" in out
