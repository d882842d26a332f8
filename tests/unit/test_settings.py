"""Settings: defaults, and one readable line naming the variable for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import (
    Destination,
    InvalidSettingsError,
    Settings,
    env_variable,
    load_settings,
    validate_ae_title,
)


@pytest.fixture(autouse=True)
def _isolated(clean_env: dict[str, str]) -> None:
    """Every test reads the settings from a clean environment and an empty working directory."""


def test_defaults_match_the_documented_interface() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("bonescan-data")
    assert settings.database_url == "sqlite:///bonescan-data/bonescan.db"
    assert settings.broker_url is None
    assert settings.listener.ae_title == "BONESCAN"
    assert settings.listener.host == "127.0.0.1"
    assert settings.listener.port == 11112
    assert settings.listener.allowed_calling_ae_titles == []
    assert settings.destinations == []
    assert settings.weights is None
    assert settings.device == "auto"


def test_database_defaults_to_sqlite_in_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONESCAN_DATA_DIR", "/srv/bonescan")
    assert load_settings().database_url == "sqlite:////srv/bonescan/bonescan.db"


def test_nested_variables_and_comma_separated_titles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONESCAN_LISTENER__PORT", "4242")
    monkeypatch.setenv("BONESCAN_LISTENER__ALLOWED_CALLING_AE_TITLES", "ECAM_1, PACS ,")
    monkeypatch.setenv(
        "BONESCAN_DESTINATIONS",
        '[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4243}]',
    )
    settings = load_settings()
    assert settings.listener.port == 4242
    assert settings.listener.allowed_calling_ae_titles == ["ECAM_1", "PACS"]
    assert settings.destinations == [
        Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4243)
    ]
    assert settings.destination("pacs").port == 4243


def test_dotenv_file_in_the_working_directory_is_read(clean_env: dict[str, str]) -> None:
    Path(".env").write_text("BONESCAN_LISTENER__AE_TITLE=FROMDOTENV\n")
    assert load_settings().listener.ae_title == "FROMDOTENV"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("BONESCAN_LISTENER__PORT", "70000", "less than or equal to 65535"),
        ("BONESCAN_LISTENER__PORT", "eleven", "valid integer"),
        ("BONESCAN_LISTENER__AE_TITLE", "A_TITLE_TOO_LONG_X", "longer than 16 characters"),
        ("BONESCAN_LISTENER__AE_TITLE", "BAD\\AE", "backslash"),
        ("BONESCAN_LISTENER__ALLOWED_CALLING_AE_TITLES", "OK,WAY_TOO_LONG_TITLE", "16"),
        ("BONESCAN_DESTINATIONS", '[{"name": "pacs"', "not valid JSON"),
        ("BONESCAN_DEVICE", "tpu", "'auto', 'cpu' or 'cuda'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert words in message
    assert "\n" not in message


def test_a_bad_destination_field_names_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BONESCAN_DESTINATIONS",
        '[{"name": "a", "ae_title": "A", "host": "h", "port": 1},'
        ' {"name": "b", "ae_title": "B", "host": "h", "port": 0}]',
    )
    with pytest.raises(InvalidSettingsError, match=r"^BONESCAN_DESTINATIONS\[1\]\.port: "):
        load_settings()


def test_destination_names_must_be_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    item = '{"name": "pacs", "ae_title": "A", "host": "h", "port": 1}'
    monkeypatch.setenv("BONESCAN_DESTINATIONS", f"[{item}, {item}]")
    with pytest.raises(InvalidSettingsError, match="repeated: pacs"):
        load_settings()


def test_tls_needs_certificate_and_key_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BONESCAN_LISTENER__TLS_CERTIFICATE", "/etc/bonescan/cert.pem")
    with pytest.raises(InvalidSettingsError, match=r"^BONESCAN_LISTENER: .*set together"):
        load_settings()


def test_unknown_destination_names_the_known_ones() -> None:
    settings = Settings(destinations=[Destination(name="a", ae_title="A", host="h", port=1)])
    with pytest.raises(KeyError, match="known: a"):
        settings.destination("b")


@pytest.mark.parametrize("title", ["A", "BONESCAN", "ABCDEFGHIJKLMNOP", " PADDED "])
def test_valid_ae_titles(title: str) -> None:
    assert validate_ae_title(title) == title.strip()


@pytest.mark.parametrize("title", ["", "   ", "ABCDEFGHIJKLMNOPQ", "TAB\tBED", "ÄRZTE"])
def test_invalid_ae_titles(title: str) -> None:
    with pytest.raises(ValueError, match="AE title"):
        validate_ae_title(title)


def test_env_variable_names() -> None:
    assert env_variable(("listener", "port")) == "BONESCAN_LISTENER__PORT"
    assert env_variable(("destinations", 2, "host")) == "BONESCAN_DESTINATIONS[2].host"
