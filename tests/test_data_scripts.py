"""Downloads and archives, tested offline: archives are built here, served from a file and from a
loopback HTTP server (with Range support, an interruption switch and a request log)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import re
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adlearn.data import MVTecDataset
from adlearn.data.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    convert_visa_to_mvtec,
    download_file,
    safe_extract,
    sha256_file,
    verify_checksum,
)
from adlearn.data.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_png(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt)


# =========================================================================== a loopback server
class FileHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can cut a response in half once."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.log.append({"path": self.path, "range": self.headers.get("Range")})
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start, requested = 0, self.headers.get("Range")
        if requested and not server.ignore_range:
            start = int(re.match(r"bytes=(\d+)-$", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in server.interrupt_once:  # promise everything, send half, hang up
            server.interrupt_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)  # port 0: a free random port
    httpd.files, httpd.interrupt_once, httpd.ignore_range, httpd.log = {}, set(), False, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz"


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


# =========================================================================== checksums
def test_verify_checksum(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"adlearn")
    assert sha256_file(path) == sha256_bytes(b"adlearn")
    assert verify_checksum(path, sha256_bytes(b"adlearn").upper()) == sha256_bytes(b"adlearn")
    with pytest.raises(ChecksumError, match="expected"):
        verify_checksum(path, "0" * 64)
    with pytest.warns(UserWarning, match=sha256_bytes(b"adlearn")):
        verify_checksum(path, None)  # no published hash: report the computed one


# =========================================================================== downloads
def test_download_complete_file(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = download_file(f"{server.url}/data.bin", tmp_path / "data.bin", sha256_bytes(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    download_file(f"{server.url}/data.bin", dest, sha256_bytes(PAYLOAD), progress=False)
    assert len(server.log) == 1  # already there with the right checksum: not fetched again


def test_download_from_a_local_file_url(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(PAYLOAD)
    dest = download_file(source.as_uri(), tmp_path / "out" / "archive.bin", sha256_bytes(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_is_rejected_and_nothing_kept(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match="corrupt or not the published one"):
        download_file(f"{server.url}/data.bin", tmp_path / "data.bin", "f" * 64, progress=False)
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.interrupt_once.add("/data.bin")
    url, dest = f"{server.url}/data.bin", tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="(?i)run the same command again to resume"):
        download_file(url, dest, sha256_bytes(PAYLOAD), retries=0, chunk_size=8192, progress=False)
    part = tmp_path / "data.bin.part"
    received = part.stat().st_size
    assert 0 < received < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:received]
    download_file(url, dest, sha256_bytes(PAYLOAD), retries=0, progress=False)
    assert server.log[-1]["range"] == f"bytes={received}-"  # asked only for the rest
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_interruption_is_retried_within_one_call(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.interrupt_once.add("/data.bin")
    dest = download_file(
        f"{server.url}/data.bin",
        tmp_path / "data.bin",
        sha256_bytes(PAYLOAD),
        retries=1,
        chunk_size=8192,
        progress=False,
    )
    assert dest.read_bytes() == PAYLOAD
    assert [entry["range"] is not None for entry in server.log] == [False, True]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    dest = download_file(f"{server.url}/data.bin", tmp_path / "data.bin", sha256_bytes(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD  # not the first 1000 bytes twice


def test_offline_and_http_errors_say_what_to_do(server, tmp_path, closed_port_url):
    with pytest.raises(DownloadError) as error:
        download_file(closed_port_url, tmp_path / "x.tar.xz", progress=False)
    assert closed_port_url in str(error.value) and "--archive PATH" in str(error.value)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/missing.tar", tmp_path / "y.tar", progress=False)


# =========================================================================== safe extraction
def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes = b"payload") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


UNSAFE_TARS = {
    "dot-dot": [file_member("ok.txt"), file_member("../evil.txt")],
    "nested-dot-dot": [file_member("a/../../evil.txt")],
    "absolute": [file_member("/tmp/adlearn-evil.txt")],
    "symlink-out": [link_member("link", "../../evil", tarfile.SYMTYPE)],
    "symlink-absolute": [link_member("link", "/etc/passwd", tarfile.SYMTYPE)],
    "hardlink-out": [link_member("hard", "../evil.txt", tarfile.LNKTYPE)],
    "device": [link_member("dev", "", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_is_rejected_before_writing_anything(tmp_path, case):
    archive = tar_with(tmp_path / "bad.tar", UNSAFE_TARS[case])
    dest = tmp_path / "out" / "inner"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not any(dest.iterdir()) if dest.exists() else True
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def zip_with(path: Path, names: list[str], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"payload")
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "../../etc/passwd")
    return path


@pytest.mark.parametrize(
    "names,symlink", [(["ok.txt", "../evil.txt"], None), (["/abs/evil.txt"], None), (["ok.txt"], "link")]
)
def test_unsafe_zip_is_rejected(tmp_path, names, symlink):
    archive = zip_with(tmp_path / "bad.zip", names, symlink)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not any(dest.iterdir()) and not (tmp_path / "evil.txt").exists()


def test_safe_archives_extract(tmp_path):
    tar = tar_with(
        tmp_path / "good.tar",
        [file_member("data/file.txt", b"hello"), link_member("alias", "data/file.txt", tarfile.SYMTYPE)],
    )
    safe_extract(tar, tmp_path / "t")
    assert (tmp_path / "t" / "alias").read_bytes() == b"hello"  # a link inside is fine
    safe_extract(zip_with(tmp_path / "good.zip", ["a/b.txt"]), tmp_path / "z")
    assert (tmp_path / "z" / "a" / "b.txt").read_bytes() == b"payload"
    (tmp_path / "junk.bin").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="neither a tar nor a zip"):
        safe_extract(tmp_path / "junk.bin", tmp_path / "j")


# =========================================================================== MVTec script
def make_mvtec_tree(root: Path, category: str = "widget") -> Path:
    rng = np.random.default_rng(0)
    base = root / category
    for rel in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/dent/000.png"):
        write_png(base / rel, rng.integers(0, 256, (16, 16, 3)))
    mask = np.zeros((16, 16), np.uint8)
    mask[3:7, 3:7] = 255
    write_png(base / "ground_truth/dent/000_mask.png", mask)
    (root / "license.txt").write_text("test data")
    return root


@pytest.fixture
def mvtec_archive(tmp_path) -> Path:
    tree = make_mvtec_tree(tmp_path / "tree")
    archive = tmp_path / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)  # categories at the top, like the real archive
    return archive


def test_mvtec_script_with_a_local_archive(tmp_path, mvtec_archive, capsys):
    script = load_script("download_mvtec")
    dest = tmp_path / "mvtec"
    code = script.main(
        ["--archive", str(mvtec_archive), "--dest", str(dest), "--sha256", sha256_file(mvtec_archive), "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    test = MVTecDataset(dest, "widget", "test")
    assert test.labels == [1, 0] and test[0]["mask"].sum() > 0
    assert "widget" in capsys.readouterr().out


def test_mvtec_script_downloads_over_http(server, tmp_path, mvtec_archive):
    server.files["/mvtec.tar.xz"] = mvtec_archive.read_bytes()
    dest = tmp_path / "mvtec"
    code = load_script("download_mvtec").main(
        [
            "--url",
            f"{server.url}/mvtec.tar.xz",
            "--dest",
            str(dest),
            "--sha256",
            sha256_file(mvtec_archive),
            "--no-progress",
        ]
    )
    assert code == 0
    assert (dest / "mvtec_anomaly_detection.tar.xz").is_file()
    assert len(MVTecDataset(dest, "widget", "train")) == 2


def test_mvtec_script_errors_are_messages(tmp_path, mvtec_archive, closed_port_url, capsys):
    script = load_script("download_mvtec")
    assert (
        script.main(["--archive", str(mvtec_archive), "--dest", str(tmp_path / "a"), "--no-progress"]) == 1
    )  # the real published checksum cannot match
    assert "sha256" in capsys.readouterr().err
    assert script.main(["--url", closed_port_url, "--dest", str(tmp_path / "b"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert closed_port_url in err and "--archive" in err
    with pytest.warns(UserWarning, match="no published checksum"):
        assert (
            script.main(
                ["--archive", str(mvtec_archive), "--dest", str(tmp_path / "c"), "--sha256", "none", "--no-progress"]
            )
            == 0
        )


def test_scripts_run_as_programs():
    for name in ("download_mvtec", "download_visa", "download_dtd"):
        result = subprocess.run(
            [sys.executable, str(REPO / "data_scripts" / f"{name}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and "--archive" in result.stdout


# =========================================================================== VisA conversion
def make_visa_tree(root: Path) -> Path:
    """A tiny VisA: 5 normal candles (3 train, 2 test) and 2 anomalous ones with index masks."""
    rng = np.random.default_rng(1)
    images = root / "candle" / "Data" / "Images"
    rows = []
    for i in range(5):
        write_png(images / "Normal" / f"{i:04d}.JPG", rng.integers(0, 256, (20, 24, 3)), "JPEG")
        split = "train" if i < 3 else "test"
        rows.append(["candle", split, "normal", f"candle/Data/Images/Normal/{i:04d}.JPG", ""])
    for i in range(2):
        write_png(images / "Anomaly" / f"{i:03d}.JPG", rng.integers(0, 256, (20, 24, 3)), "JPEG")
        mask = np.zeros((20, 24), np.uint8)
        mask[2:6, 5:9] = 1 + i  # VisA stores defect indices, not 0/255
        write_png(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", mask)
        rows.append(
            [
                "candle",
                "test",
                "anomaly",
                f"candle/Data/Images/Anomaly/{i:03d}.JPG",
                f"candle/Data/Masks/Anomaly/{i:03d}.png",
            ]
        )
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def test_visa_script_converts_to_mvtec_layout(tmp_path):
    tree = make_visa_tree(tmp_path / "VisA_20220922")
    archive = tmp_path / "VisA_20220922.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="VisA_20220922")  # a wrapping folder is found too
    dest = tmp_path / "datasets"
    code = load_script("download_visa").main(
        ["--archive", str(archive), "--dest", str(dest), "--sha256", sha256_file(archive), "--no-progress"]
    )
    assert code == 0
    out = dest / "visa" / "candle"
    assert sorted(p.name for p in (out / "train" / "good").iterdir()) == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert sorted(p.name for p in (out / "test" / "good").iterdir()) == ["0003.JPG", "0004.JPG"]
    assert sorted(p.name for p in (out / "test" / "bad").iterdir()) == ["000.JPG", "001.JPG"]
    for name in ("000_mask.png", "001_mask.png"):
        mask = np.asarray(Image.open(out / "ground_truth" / "bad" / name))
        assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 16
    assert not (dest / "visa_raw").exists()  # the original layout is removed unless --keep-raw
    test = MVTecDataset(dest / "visa", "candle", "test")
    assert test.labels == [1, 1, 0, 0] and all(test[i]["mask"].sum() > 0 for i in (0, 1))


def test_visa_conversion_reports_missing_files(tmp_path):
    tree = make_visa_tree(tmp_path / "visa")
    (tree / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match=r"missing.*001"):
        convert_visa_to_mvtec(tree, tmp_path / "out")
    with pytest.raises(DataError, match="1cls.csv not found"):
        convert_visa_to_mvtec(tmp_path, tmp_path / "out")


# =========================================================================== DTD (DRAEM's textures)
def make_dtd_archive(tmp_path: Path, evil: bool = False) -> Path:
    """A tiny dtd-r1.0.1.tar.gz: dtd/images/<class>/<name>.jpg (and, if ``evil``, a member escaping the folder)."""
    archive = tmp_path / "dtd-r1.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for texture in ("banded", "dotted"):
            for index in range(2):
                buffer = io.BytesIO()
                Image.fromarray(np.full((16, 16, 3), 40 * index + 60, np.uint8)).save(buffer, format="JPEG")
                info = tarfile.TarInfo(f"dtd/images/{texture}/{texture}_{index:04d}.jpg")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
        if evil:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    return archive


def test_dtd_script_extracts_a_texture_folder_draem_can_use(tmp_path, capsys):
    from adlearn.data import PerlinAnomalyGenerator

    archive = make_dtd_archive(tmp_path)
    dest = tmp_path / "datasets"
    code = load_script("download_dtd").main(
        ["--archive", str(archive), "--dest", str(dest), "--sha256", sha256_file(archive), "--no-progress"]
    )
    assert code == 0
    images = dest / "dtd" / "images"
    assert f"anomaly_source={str(images)!r}" in capsys.readouterr().out
    generator = PerlinAnomalyGenerator(images, seed=0)
    assert len(generator.texture_paths) == 4 and generator.generate_texture(8, 8).shape == (3, 8, 8)
    # a wrong checksum stops before extracting anything
    code = load_script("download_dtd").main(
        ["--archive", str(archive), "--dest", str(tmp_path / "other"), "--sha256", "0" * 64, "--no-progress"]
    )
    assert code == 1 and not (tmp_path / "other" / "dtd").exists()


def test_dtd_archive_escaping_its_folder_is_rejected(tmp_path):
    archive = make_dtd_archive(tmp_path, evil=True)
    code = load_script("download_dtd").main(
        ["--archive", str(archive), "--dest", str(tmp_path / "d"), "--sha256", sha256_file(archive), "--no-progress"]
    )
    assert code == 1
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "d" / "dtd").exists()
