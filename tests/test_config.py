"""The configuration file as an operator writes it: defaults, errors that point at the line, env."""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from freshd import paths
from freshd.addresses import split_host_port
from freshd.config import load_config
from freshd.config_model import (
    ClusterConfig,
    Config,
    ConnectionConfig,
    EventsConfig,
    PoliciesConfig,
    ScheduleConfig,
    StalenessConfig,
    StoreConfig,
    SyncConfig,
)
from freshd.config_reader import parse_duration
from freshd.connection_state import PolicySettings
from freshd.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parent.parent
ENV: dict[str, str] = {"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/home/u/.local/state"}

WOO = """\
[[connections]]
name = "shop-eu"
provider = "woocommerce"
base_url = "https://shop.example.com"
tenant = "acme"
credentials = { consumer_key = "ck_live_0123456789", consumer_secret = "cs_live_abcdefghij" }
options = { diff_interval = 50, entities = ["orders", "products"], rate_limits = { customers = "2/s" } }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "freshd.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=ENV if env is None else env)
    return info.value


# -- defaults ---------------------------------------------------------------------------------------------


def test_empty_file_is_valid_with_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env=ENV)
    assert config.connections == ()
    assert config.database_url is None
    assert config.source == tmp_path / "freshd.toml"
    assert config.admin.socket_mode == 0o660
    assert config.admin.group is None
    assert config.admin.request_timeout == 30.0
    assert config.metrics.address == "127.0.0.1:9464"
    assert config.metrics.enabled is True
    assert (config.log.level, config.log.format) == ("info", "auto")
    s = config.schedule
    assert (s.sync_interval, s.health_interval, s.token_interval, s.jitter) == (7200, 900, 3600, 60)
    assert s.cleanup_cron == "0 2 * * *"
    assert s.scheduled_sync is True
    assert (config.staleness.fresh_below, config.staleness.stale_after, config.staleness.min_gap) == (
        7200, 14400, 300)
    assert (config.sync.page_concurrency, config.sync.db_threads, config.sync.job_history) == (4, 4, 10)
    assert config.sync.job_max_age == 30 * 86400


def test_default_paths_follow_freshd_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env=ENV)
    assert config.state_dir == paths.default_state_dir(ENV)
    assert config.runtime_dir == paths.default_runtime_dir(ENV)
    assert config.admin.socket == paths.default_runtime_dir(ENV) / paths.SOCKET_NAME


def test_no_path_and_no_default_file_gives_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(paths, "DEFAULT_CONFIG_PATH", tmp_path / "missing.toml")
    config = load_config(None, env=ENV)
    assert config.source is None
    assert config.connections == ()
    assert config.schedule.sync_interval == 7200


def test_no_path_reads_the_default_file_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path, '[log]\nlevel = "debug"\n')
    monkeypatch.setattr(paths, "DEFAULT_CONFIG_PATH", path)
    config = load_config(None, env=ENV)
    assert config.source == path
    assert config.log.level == "debug"


def _without_source(config: Config) -> Config:
    return replace(config, source=None)


# keys the example documents without a fixed default: they depend on the machine
_MACHINE_KEYS = {"database_url", "state_dir", "runtime_dir", "socket", "group", "key_files", "credential", "redis_url",
                 "member_name"}


def test_documented_example_states_the_defaults(tmp_path: Path) -> None:
    example = REPO / "config" / "freshd.toml"
    defaults = _without_source(load_config(write(tmp_path, ""), env=ENV))
    assert _without_source(load_config(example, env=ENV)) == defaults
    # uncommenting every documented `# key = default` gives the same configuration
    lines, uncommented = [], 0
    for line in example.read_text(encoding="utf-8").splitlines():
        if "[[connections]]" in line:
            break  # the example connection stays commented out
        match = re.match(r"#\s?([a-z_]+) = ", line)
        if match and match.group(1) not in _MACHINE_KEYS:
            lines.append(line[match.start(1):])
            uncommented += 1
        else:
            lines.append(line)
    assert uncommented == 55  # every key of every section but the machine-dependent ones
    assert _without_source(load_config(write(tmp_path, "\n".join(lines)), env=ENV)) == defaults


def test_example_connection_loads_when_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config" / "freshd.toml").read_text(encoding="utf-8")
    block = text[text.index("# [[connections]]"):]
    lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines()]
    (spec,) = load_config(write(tmp_path, "\n".join(lines)), env=ENV).connections
    assert spec.provider == "woocommerce"


# -- a full file ------------------------------------------------------------------------------------------


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"""\
        database_url = "postgresql://freshd:pw-s3cret@db.internal/freshd"
        state_dir = "/srv/freshd"
        runtime_dir = "/run/fd"

        [admin]
        socket_mode = "0600"
        group = "freshd-admin"
        request_timeout = "1m30s"

        [metrics]
        address = "[::1]:9100"

        [log]
        level = "WARNING"
        format = "json"

        [schedule]
        sync_interval = "1h30m"
        health_interval = 600
        cleanup_cron = "30 3 * * 0"
        scheduled_sync = false
        jitter = "0s"

        [staleness]
        fresh_below = "1h"
        stale_after = "1d"
        min_gap = 0

        [sync]
        page_concurrency = 8
        job_max_age = "2w"

        {WOO}
        [[connections]]
        name = "erp"
        provider = "odoo"
        base_url = "http://odoo.local:8069/"
        enabled = false
        options = {{ database = "acme", username = "api@acme.example" }}
        credentials = {{ api_key = "k-odoo" }}
        """), env=ENV)
    assert config.database_url == "postgresql://freshd:pw-s3cret@db.internal/freshd"
    assert config.state_dir == Path("/srv/freshd")
    assert config.admin.socket == Path("/run/fd/admin.sock")  # follows runtime_dir
    assert config.admin.socket_mode == 0o600
    assert config.admin.group == "freshd-admin"
    assert config.admin.request_timeout == 90
    assert split_host_port(config.metrics.address) == ("::1", 9100)
    assert (config.log.level, config.log.format) == ("warning", "json")
    assert config.schedule.sync_interval == 5400
    assert config.schedule.health_interval == 600
    assert config.schedule.scheduled_sync is False
    assert config.schedule.jitter == 0
    assert config.staleness.stale_after == 86400
    assert config.sync.page_concurrency == 8
    assert config.sync.job_max_age == 14 * 86400
    shop, erp = config.connections
    assert (shop.name, shop.provider, shop.tenant, shop.enabled) == ("shop-eu", "woocommerce", "acme", True)
    assert dict(shop.credentials) == {
        "consumer_key": "ck_live_0123456789", "consumer_secret": "cs_live_abcdefghij"}
    assert shop.options["diff_interval"] == 50
    assert list(shop.options["entities"]) == ["orders", "products"]
    # options go to the store as JSON: still a dict to json
    assert json.loads(json.dumps(dict(shop.options))) == {
        "diff_interval": 50, "entities": ["orders", "products"], "rate_limits": {"customers": "2/s"}}
    assert (erp.tenant, erp.enabled, erp.options["database"]) == ("default", False, "acme")
    assert config.connection("erp") is erp
    assert config.secret_values() == {"ck_live_0123456789", "cs_live_abcdefghij", "pw-s3cret", "k-odoo"}


def test_config_is_frozen_and_hashable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, WOO), env=ENV)
    assert hash(config) == hash(load_config(write(tmp_path, WOO), env=ENV))
    with pytest.raises(FrozenInstanceError):
        config.log = config.log  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.connections[0].options["diff_interval"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        config.connections[0].credentials["consumer_key"] = "x"  # type: ignore[index]


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'database_url = "postgresql://u:pw-s3cret@h/db"\n' + WOO), env=ENV)
    spec = config.connections[0]
    for text in (repr(config), str(config), repr(spec), repr(spec.credentials), str(spec.credentials)):
        assert "ck_live_0123456789" not in text
        assert "cs_live_abcdefghij" not in text
        assert "pw-s3cret" not in text
    assert "consumer_key" in repr(config.connections[0].credentials)  # which keys exist is not secret


# -- durations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("250ms", 0.25),
    ("1w", 604800), (45, 45), ("45", 45), ("0s", 0), (" 2H ", 7200),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-5s", "1.5.2h", "h", "5 m", -3, True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- errors name the key and the line ------------------------------------------------------------------


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    err = error_of(tmp_path, '\n[shedule]\nsync_interval = "1h"\n')
    assert err.where == f"{tmp_path / 'freshd.toml'}:2: shedule"
    assert "did you mean 'schedule'" in str(err)


def test_unknown_nested_key_suggests(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[schedule]\njitter = "5s"\nsync_intervall = "1h"\n')
    assert err.where is not None and err.where.endswith(":3: schedule.sync_intervall")
    assert "did you mean 'sync_interval'" in str(err)


def test_unknown_connection_key_names_index_and_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, WOO + '\n[[connections]]\nname = "b"\nprovider = "odoo"\n'
                   'base_url = "https://o.example"\nbase_ulr = "x"\n')
    assert err.where is not None and err.where.endswith(":13: connections[1].base_ulr")
    assert "did you mean 'base_url'" in str(err)


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ('[sync]\npage_concurrency = "4"\n', "sync.page_concurrency", 2, "expected an integer"),
    ('[sync]\n\ndb_threads = 0\n', "sync.db_threads", 3, "at least 1"),
    ('[schedule]\nscheduled_sync = "yes"\n', "schedule.scheduled_sync", 2, "expected a boolean"),
    ('admin = 5\n', "admin", 1, "expected a table"),
    ('[log]\nlevel = "verbose"\n', "log.level", 2, "unknown value"),
    ('[log]\nformat = "jsn"\n', "log.format", 2, "did you mean 'json'"),
    ('[admin]\nsocket_mode = 660\n', "admin.socket_mode", 2, "octal string"),
    ('[admin]\nsocket_mode = "0999"\n', "admin.socket_mode", 2, "octal string"),
    ('[metrics]\naddress = "localhost"\n', "metrics.address", 2, "host:port"),
    ('[metrics]\naddress = "::1:9000"\n', "metrics.address", 2, "brackets"),
    ('database_url = "mysql://x/y"\n', "database_url", 1, "postgresql://"),
])
def test_type_and_value_errors(tmp_path: Path, text: str, key: str, line: int, words: str) -> None:
    err = error_of(tmp_path, text)
    assert err.where == f"{tmp_path / 'freshd.toml'}:{line}: {key}"
    assert words in str(err)


@pytest.mark.parametrize(("value", "words"), [
    ('"soon"', "bad duration"), ('"-1h"', "bad duration"), ("0", "longer than zero"), ("true", "duration"),
])
def test_bad_duration_names_key_and_line(tmp_path: Path, value: str, words: str) -> None:
    err = error_of(tmp_path, f'[schedule]\njitter = "1s"\nsync_interval = {value}\n')
    assert err.where is not None and err.where.endswith(":3: schedule.sync_interval")
    assert words in str(err)


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://shop.example.com", "http:// or https://"),
    ("https://", "no host"),
    ("shop.example.com", "http:// or https://"),
    ("https://shop.example.com:99999", "not a valid URL"),
    ("https://shop example.com", "whitespace"),
])
def test_bad_base_url(tmp_path: Path, url: str, words: str) -> None:
    text = WOO + f'\n[[connections]]\nname = "b"\nprovider = "odoo"\nbase_url = "{url}"\n'
    err = error_of(tmp_path, text)
    assert err.where is not None and err.where.endswith(":12: connections[1].base_url")
    assert words in str(err)


def test_duplicate_connection_names(tmp_path: Path) -> None:
    err = error_of(tmp_path, WOO + "\n" + WOO)
    assert err.where is not None and err.where.endswith(":10: connections[1].name")
    assert "duplicate connection name 'shop-eu'" in str(err)
    assert "connections[0]" in str(err)


def test_unknown_provider_suggests_and_lists(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[[connections]]\nname = "a"\nprovider = "woocomerce"\nbase_url = "https://x.io"\n')
    assert err.where is not None and err.where.endswith(":3: connections[0].provider")
    assert "did you mean 'woocommerce'" in str(err)
    err = error_of(tmp_path, '[[connections]]\nname = "a"\nprovider = "zzz"\nbase_url = "https://x.io"\n')
    assert "odoo" in str(err) and "woocommerce" in str(err)


def test_providers_argument_is_the_valid_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[[connections]]\nname = "a"\nprovider = "custom"\nbase_url = "https://x.io"\n')
    assert load_config(path, env=ENV, providers=["custom"]).connections[0].provider == "custom"
    with pytest.raises(ConfigError, match="unknown provider 'custom'"):
        load_config(path, env=ENV)


def test_missing_required_connection_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, '\n[[connections]]\nname = "a"\nprovider = "odoo"\n')
    assert err.where is not None and err.where.endswith(":2: connections[0].base_url")
    assert "missing required key 'base_url'" in str(err)


def test_bad_connection_name(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[[connections]]\nname = "has space"\nprovider = "odoo"\nbase_url = "https://x.io"\n')
    assert err.where is not None and err.where.endswith(":2: connections[0].name")


def test_credential_values_must_be_strings_and_are_not_echoed(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[[connections]]\nname = "a"\nprovider = "odoo"\nbase_url = "https://x.io"\n'
                   "[connections.credentials]\nuser = \"me\"\npin = 987654321\n")
    assert err.where is not None and err.where.endswith(":7: connections[0].credentials.pin")
    assert "987654321" not in str(err)


def test_invalid_cron(tmp_path: Path) -> None:
    for expr in ("0 2 * *", "61 2 * * *", "0 2 * * funday"):
        err = error_of(tmp_path, f'[schedule]\ncleanup_cron = "{expr}"\n')
        assert err.where is not None and err.where.endswith(":2: schedule.cleanup_cron")
        assert "invalid cron expression" in str(err)


def test_cross_field_staleness(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[staleness]\nfresh_below = "5h"\nstale_after = "4h"\n')
    assert err.where is not None and err.where.endswith(":3: staleness.stale_after")
    assert "must be longer than fresh_below" in str(err)
    err = error_of(tmp_path, '[staleness]\nfresh_below = "5h"\n')  # against the default stale_after
    assert err.where is not None and err.where.endswith(":2: staleness.fresh_below")
    err = error_of(tmp_path, '[staleness]\nmin_gap = "-1m"\n')
    assert err.where is not None and err.where.endswith(":2: staleness.min_gap")


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[log]\nlevel = "info"\nformat = json\n')
    assert err.where == f"{tmp_path / 'freshd.toml'}:3"
    assert "invalid TOML" in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", env=ENV)


def test_invalid_file_changes_nothing(tmp_path: Path) -> None:
    good = load_config(write(tmp_path, WOO), env=ENV)
    before = repr(good), hash(good)
    # a broken connection after a valid one, and a broken key after valid sections
    with pytest.raises(ConfigError):
        text = WOO.replace("shop-eu", "other") + "\n" + WOO.replace("https", "gopher")
        load_config(write(tmp_path, text), env=ENV)
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, '[log]\nlevel = "debug"\n[sync]\ndb_threads = -1\n'), env=ENV)
    assert (repr(good), hash(good)) == before
    assert good.log.level == "info"


# -- environment ------------------------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'database_url = "postgresql://file/db"\n'
                 '[log]\nlevel = "debug"\n[metrics]\naddress = "0.0.0.0:1"\n')
    env = {**ENV, "FRESHD_DATABASE_URL": "postgresql://env/db", "FRESHD_SOCKET": "/tmp/x.sock",
           "FRESHD_STATE_DIR": "/srv/state", "FRESHD_RUNTIME_DIR": "/srv/run",
           "FRESHD_METRICS_ADDRESS": "127.0.0.1:0", "FRESHD_LOG_LEVEL": "error",
           "FRESHD_LOG_FORMAT": "console"}
    config = load_config(path, env=env)
    assert config.database_url == "postgresql://env/db"
    assert config.admin.socket == Path("/tmp/x.sock")
    assert config.state_dir == Path("/srv/state")
    assert config.runtime_dir == Path("/srv/run")
    assert config.metrics.address == "127.0.0.1:0"
    assert (config.log.level, config.log.format) == ("error", "console")


def test_runtime_dir_from_env_moves_the_default_socket(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={**ENV, "FRESHD_RUNTIME_DIR": "/srv/run"})
    assert config.admin.socket == Path("/srv/run/admin.sock")


def test_empty_metrics_address_disables(tmp_path: Path) -> None:
    no_address = {**ENV, "FRESHD_METRICS_ADDRESS": ""}
    assert load_config(write(tmp_path, ""), env=no_address).metrics.enabled is False
    assert load_config(write(tmp_path, '[metrics]\naddress = ""\n'), env=ENV).metrics.enabled is False
    assert load_config(write(tmp_path, "[metrics]\nenabled = false\n"), env=ENV).metrics.enabled is False
    # other empty variables count as unset
    assert load_config(write(tmp_path, ""), env={**ENV, "FRESHD_LOG_LEVEL": ""}).log.level == "info"


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[log]\nlevel = \"info\"\n", env={**ENV, "FRESHD_LOG_LEVEL": "loud"})
    assert err.where == "$FRESHD_LOG_LEVEL (log.level)"
    err = error_of(tmp_path, "", env={**ENV, "FRESHD_METRICS_ADDRESS": "nope"})
    assert err.where == "$FRESHD_METRICS_ADDRESS (metrics.address)"
    err = error_of(tmp_path, "", env={**ENV, "FRESHD_DATABASE_URL": "mysql://h/db"})
    assert err.where == "$FRESHD_DATABASE_URL (database_url)"


def test_connection_config_direct_construction() -> None:
    spec = ConnectionConfig(name="a", provider="odoo", base_url="https://x.io")
    assert spec.tenant == "default" and spec.enabled and dict(spec.credentials) == {}


def test_store_timeouts_are_configurable_and_checked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[store]\nstatement_timeout = "5s"\nlock_timeout = "500ms"\n'), env=ENV)
    assert (config.store.statement_timeout, config.store.lock_timeout) == (5.0, 0.5)
    assert load_config(write(tmp_path, ""), env=ENV).store.statement_timeout == 30.0
    with pytest.raises(ConfigError, match=r"store\.statement_timeout"):
        load_config(write(tmp_path, '[store]\nstatement_timeout = "soon"\n'), env=ENV)


def test_purge_needs_enabled_false_on_the_same_connection(tmp_path: Path) -> None:
    disabled = WOO.replace('name = "shop-eu"', 'name = "shop-eu"\nenabled = false\npurge = true')
    (spec,) = load_config(write(tmp_path, disabled), env=ENV).connections
    assert (spec.enabled, spec.purge) == (False, True)
    assert load_config(write(tmp_path, WOO), env=ENV).connections[0].purge is False
    err = error_of(tmp_path, WOO.replace('name = "shop-eu"', 'name = "shop-eu"\npurge = true'))
    assert "connections[0].purge" in str(err) and "needs enabled = false" in str(err)


def test_every_problem_of_the_file_is_reported_at_once_each_at_its_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[sync]\nmax_running = 0\n\n[log]\nlevel = "loud"\n\n'
                             '[policies.breaker]\ncooldown = "soon"\n\n[metricz]\n')
    assert isinstance(err, ConfigErrors) and len(err.errors) == 4
    wheres = [e.where or "" for e in err.errors]
    assert any(w.endswith(":10: metricz") for w in wheres)
    assert any(w.endswith(":2: sync.max_running") for w in wheres)
    assert any(w.endswith(":5: log.level") for w in wheres)
    assert any(w.endswith(":8: policies.breaker.cooldown") for w in wheres)
    assert str(err).startswith("4 problems: ")


def test_each_section_default_comes_from_its_dataclass(tmp_path: Path) -> None:
    """An empty file gives exactly the dataclasses' defaults: nothing is restated in the reader."""
    config = load_config(write(tmp_path, ""), env=ENV)
    assert config.policies == PoliciesConfig()
    assert (config.schedule, config.staleness, config.sync, config.store, config.cluster, config.events) == (
        ScheduleConfig(), StalenessConfig(), SyncConfig(), StoreConfig(), ClusterConfig(), EventsConfig())
    assert config.policies.token_refresh_buffer == PolicySettings().token_refresh_buffer
