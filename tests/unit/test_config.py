"""Unit tests of configuration resolution: precedence, file discovery, secrecy of the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from simvue_otel._internal.config import (
    Secret,
    SimvueConfig,
    find_config_file,
    resolve_config,
)
from simvue_otel._internal.errors import ConfigurationError

FILE_TOKEN = "file-token-4f1c9a"
ENV_TOKEN = "env-token-77b2e0"
ARG_TOKEN = "arg-token-0d93aa"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A fake home and a working directory two levels below a project root, apart."""
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "work" / "project" / "sub"
    cwd.mkdir(parents=True)
    return cwd, home


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


FULL_FILE = f"""
[server]
url = "https://file.example"
token = "{FILE_TOKEN}"

[offline]
cache = "/file/cache"
"""


# --- Secret --------------------------------------------------------------------------------


def test_secret_hides_value() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('********')"
    assert str(secret) == "Secret('********')"
    assert f"{secret}" == "Secret('********')"
    assert secret.reveal() == "hunter2"


def test_secret_equality_and_truth() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert bool(Secret("a"))
    assert not Secret("")


def test_secret_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


# --- precedence ----------------------------------------------------------------------------


def test_defaults_without_any_source(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    config = resolve_config(cwd=cwd, environ={}, home=home)
    assert config == SimvueConfig(
        url=None, token=None, offline_directory=home / ".simvue", config_file=None
    )


def test_file_values_used_when_nothing_else(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = write_toml(cwd / "simvue.toml", FULL_FILE)
    config = resolve_config(cwd=cwd, environ={}, home=home)
    assert config.url == "https://file.example"
    assert config.token == Secret(FILE_TOKEN)
    assert config.offline_directory == Path("/file/cache")
    assert config.config_file == path


def test_env_beats_file(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", FULL_FILE)
    environ = {
        "SIMVUE_URL": "https://env.example",
        "SIMVUE_TOKEN": ENV_TOKEN,
        "SIMVUE_OFFLINE_DIRECTORY": "/env/cache",
    }
    config = resolve_config(cwd=cwd, environ=environ, home=home)
    assert config.url == "https://env.example"
    assert config.token == Secret(ENV_TOKEN)
    assert config.offline_directory == Path("/env/cache")


def test_arguments_beat_env_and_file(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", FULL_FILE)
    environ = {
        "SIMVUE_URL": "https://env.example",
        "SIMVUE_TOKEN": ENV_TOKEN,
        "SIMVUE_OFFLINE_DIRECTORY": "/env/cache",
    }
    config = resolve_config(
        "https://arg.example",
        ARG_TOKEN,
        Path("/arg/cache"),
        cwd=cwd,
        environ=environ,
        home=home,
    )
    assert config.url == "https://arg.example"
    assert config.token == Secret(ARG_TOKEN)
    assert config.offline_directory == Path("/arg/cache")


def test_secret_argument_accepted(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    config = resolve_config(token=Secret(ARG_TOKEN), cwd=cwd, environ={}, home=home)
    assert config.token == Secret(ARG_TOKEN)


def test_each_setting_falls_back_on_its_own(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", FULL_FILE)
    config = resolve_config(
        url="https://arg.example", cwd=cwd, environ={"SIMVUE_TOKEN": ENV_TOKEN}, home=home
    )
    assert config.url == "https://arg.example"
    assert config.token == Secret(ENV_TOKEN)
    assert config.offline_directory == Path("/file/cache")


def test_empty_env_counts_as_unset(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", FULL_FILE)
    environ = {"SIMVUE_URL": "", "SIMVUE_TOKEN": "", "SIMVUE_OFFLINE_DIRECTORY": ""}
    config = resolve_config(cwd=cwd, environ=environ, home=home)
    assert config.url == "https://file.example"
    assert config.token == Secret(FILE_TOKEN)
    assert config.offline_directory == Path("/file/cache")


def test_empty_env_without_file_gives_defaults(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    environ = {"SIMVUE_URL": "", "SIMVUE_TOKEN": "", "SIMVUE_OFFLINE_DIRECTORY": ""}
    config = resolve_config(cwd=cwd, environ=environ, home=home)
    assert config.url is None
    assert config.token is None
    assert config.offline_directory == home / ".simvue"


@pytest.mark.parametrize(
    ("given", "relative"),
    [("~", ""), ("~/cache", "cache"), ("~/a/b", "a/b")],
)
def test_offline_directory_expands_tilde_against_home(
    dirs: tuple[Path, Path], given: str, relative: str
) -> None:
    cwd, home = dirs
    from_env = resolve_config(cwd=cwd, environ={"SIMVUE_OFFLINE_DIRECTORY": given}, home=home)
    assert from_env.offline_directory == home / relative
    from_arg = resolve_config(offline_directory=given, cwd=cwd, environ={}, home=home)
    assert from_arg.offline_directory == home / relative


def test_offline_directory_from_file_expands_tilde(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", '[offline]\ncache = "~/sv"\n')
    config = resolve_config(cwd=cwd, environ={}, home=home)
    assert config.offline_directory == home / "sv"


def test_partial_file(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", '[server]\nurl = "http://localhost:8000"\n')
    config = resolve_config(cwd=cwd, environ={}, home=home)
    assert config.url == "http://localhost:8000"
    assert config.token is None
    assert config.offline_directory == home / ".simvue"


# --- file discovery ------------------------------------------------------------------------


def test_simvue_toml_in_parent_beats_dot_file_in_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    parent_file = write_toml(cwd.parent.parent / "simvue.toml", FULL_FILE)
    write_toml(cwd / ".simvue.toml", '[server]\nurl = "https://dot.example"\n')
    assert find_config_file(cwd, home) == parent_file
    assert resolve_config(cwd=cwd, environ={}, home=home).url == "https://file.example"


def test_nearest_file_of_same_name_wins(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd.parent.parent / "simvue.toml", FULL_FILE)
    near = write_toml(cwd.parent / "simvue.toml", '[server]\nurl = "https://near.example"\n')
    assert find_config_file(cwd, home) == near


def test_home_simvue_toml_beats_dot_file_in_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    home_file = write_toml(home / "simvue.toml", FULL_FILE)
    write_toml(cwd / ".simvue.toml", '[server]\nurl = "https://dot.example"\n')
    assert find_config_file(cwd, home) == home_file


def test_home_file_used_when_nothing_in_tree(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    home_file = write_toml(home / "simvue.toml", FULL_FILE)
    config = resolve_config(cwd=cwd, environ={}, home=home)
    assert config.config_file == home_file
    assert config.url == "https://file.example"


def test_home_dot_file_used_last(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    home_file = write_toml(home / ".simvue.toml", FULL_FILE)
    assert find_config_file(cwd, home) == home_file


def test_dot_file_in_tree_beats_dot_file_in_home(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(home / ".simvue.toml", FULL_FILE)
    tree_file = write_toml(cwd.parent / ".simvue.toml", FULL_FILE)
    assert find_config_file(cwd, home) == tree_file


def test_no_file_found(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    assert find_config_file(cwd, home) is None


def test_directory_named_like_config_is_ignored(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / "simvue.toml").mkdir()
    assert find_config_file(cwd, home) is None


# --- bad files -----------------------------------------------------------------------------


def test_invalid_toml_names_file(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = write_toml(cwd / "simvue.toml", f'[server\ntoken = "{FILE_TOKEN}"\n')
    with pytest.raises(ConfigurationError) as info:
        resolve_config(cwd=cwd, environ={}, home=home)
    message = str(info.value)
    assert str(path) in message
    assert "TOML" in message
    assert "line" in message
    assert FILE_TOKEN not in message


@pytest.mark.parametrize("key", ["url", "token"])
def test_non_string_server_value_names_key_and_file(dirs: tuple[Path, Path], key: str) -> None:
    cwd, home = dirs
    path = write_toml(cwd / "simvue.toml", f"[server]\n{key} = 12345\n")
    with pytest.raises(ConfigurationError) as info:
        resolve_config(cwd=cwd, environ={}, home=home)
    message = str(info.value)
    assert f"[server] {key}" in message
    assert str(path) in message
    assert "12345" not in message


def test_non_string_offline_cache_rejected(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = write_toml(cwd / "simvue.toml", "[offline]\ncache = 1\n")
    with pytest.raises(ConfigurationError, match=r"\[offline\] cache") as info:
        resolve_config(cwd=cwd, environ={}, home=home)
    assert str(path) in str(info.value)


# --- secrecy -------------------------------------------------------------------------------


def test_token_never_in_repr_or_str(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    write_toml(cwd / "simvue.toml", FULL_FILE)
    for config in (
        resolve_config(cwd=cwd, environ={}, home=home),
        resolve_config(cwd=cwd, environ={"SIMVUE_TOKEN": ENV_TOKEN}, home=home),
        resolve_config(token=ARG_TOKEN, cwd=cwd, environ={}, home=home),
    ):
        for shown in (repr(config), str(config), f"{config}", repr(config.token)):
            assert FILE_TOKEN not in shown
            assert ENV_TOKEN not in shown
            assert ARG_TOKEN not in shown
        assert "Secret('********')" in repr(config)


def test_token_not_in_require_online_errors() -> None:
    config = SimvueConfig(
        url="ftp://server", token=Secret(ARG_TOKEN), offline_directory=Path("/x"), config_file=None
    )
    with pytest.raises(ConfigurationError) as info:
        config.require_online()
    assert ARG_TOKEN not in str(info.value)

    no_url = SimvueConfig(
        url=None, token=Secret(ARG_TOKEN), offline_directory=Path("/x"), config_file=None
    )
    with pytest.raises(ConfigurationError) as info:
        no_url.require_online()
    assert ARG_TOKEN not in str(info.value)


# --- api_url and require_online ------------------------------------------------------------


TOKEN = "tok"


def make(url: str | None, token: str | None = TOKEN) -> SimvueConfig:
    return SimvueConfig(
        url=url,
        token=None if token is None else Secret(token),
        offline_directory=Path("/offline"),
        config_file=None,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://simvue.example", "https://simvue.example/api"),
        ("https://simvue.example/", "https://simvue.example/api"),
        ("https://simvue.example///", "https://simvue.example/api"),
        ("http://localhost:8000/prefix/", "http://localhost:8000/prefix/api"),
    ],
)
def test_api_url(url: str, expected: str) -> None:
    assert make(url).api_url() == expected


def test_api_url_without_url() -> None:
    with pytest.raises(ConfigurationError, match="SIMVUE_URL"):
        make(None).api_url()


@pytest.mark.parametrize("url", ["http://localhost:8000", "https://simvue.example"])
def test_require_online_passes(url: str) -> None:
    assert make(url).require_online() is None


@pytest.mark.parametrize(
    ("url", "token", "missing"),
    [
        (None, "tok", "SIMVUE_URL"),
        ("https://simvue.example", None, "SIMVUE_TOKEN"),
        ("https://simvue.example", "", "SIMVUE_TOKEN"),
        (None, None, "SIMVUE_URL and SIMVUE_TOKEN"),
    ],
)
def test_require_online_missing(url: str | None, token: str | None, missing: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(url, token).require_online()
    message = str(info.value)
    assert f"({missing} missing)" in message
    assert "set SIMVUE_URL and SIMVUE_TOKEN, or [server] url and token in simvue.toml" in message
    assert "simvue-otel server" in message


@pytest.mark.parametrize("url", ["ftp://simvue.example", "simvue.example", "localhost:8000"])
def test_require_online_non_http_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(url).require_online()
    message = str(info.value)
    assert repr(url) in message
    assert "http://" in message
    assert "https://" in message


def test_config_is_frozen() -> None:
    config = make("https://simvue.example")
    with pytest.raises(AttributeError):
        config.url = "https://other.example"  # type: ignore[misc]


# -- the one table of settings -------------------------------------------------------------------


def test_environment_variables_are_read_only_in_the_settings_module() -> None:
    """Every environment variable simvue-otel reads goes through config.py's table, so the
    docs list them all; no other module of the package touches os.environ."""
    import simvue_otel

    package = Path(simvue_otel.__file__).parent
    readers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if ("os.environ" in path.read_text() or "getenv(" in path.read_text())
    )
    assert readers == ["_internal/config.py"]


def test_the_configuration_page_is_generated_from_the_settings_table() -> None:
    from simvue_otel._internal.config import SETTINGS, settings_markdown

    page = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert "<!-- settings:core -->" in page and "<!-- settings:other -->" in page
    tables = settings_markdown(True) + settings_markdown(False)
    for entry in SETTINGS:
        assert f"`{entry.name}`" in tables, entry.name
    assert {s.name for s in SETTINGS} >= {
        "SIMVUE_URL", "SIMVUE_TOKEN", "SIMVUE_OFFLINE_DIRECTORY", "SIMVUE_OTEL_MODE",
        "SIMVUE_OTEL_SHUTDOWN_TIMEOUT", "SIMVUE_OTEL_SPAN_EVENTS", "SIMVUE_OTEL_BRIDGE_TOKEN",
    }  # fmt: skip


def test_an_empty_setting_counts_as_unset() -> None:
    from simvue_otel._internal.config import setting

    assert setting("SIMVUE_OTEL_MODE", {"SIMVUE_OTEL_MODE": ""}) == "online"
    assert setting("SIMVUE_OTEL_MODE", {"SIMVUE_OTEL_MODE": "offline"}) == "offline"
    assert setting("SIMVUE_OTEL_BRIDGE_TOKEN", {}) is None
    with pytest.raises(KeyError):
        setting("SIMVUE_NOT_A_SETTING", {})
