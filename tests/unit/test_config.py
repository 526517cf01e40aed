"""The configuration: loading, validation messages, environment overrides and secrets."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr

from cdc.config import (
    Config,
    DeclarativeMapping,
    HttpSinkConfig,
    KafkaSinkConfig,
    PostgresSinkConfig,
    load_config,
    parse_config,
)
from cdc.core.errors import ConfigError
from cdc.core.secrets import redact_dsn, redact_properties

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cdcsync.example.yaml"
EXAMPLE_ENV = {
    "CDCSYNC_SOURCE_DSN": "postgresql://cdc:example-src-pw@db:5432/app",
    "CRM_SECRET": "example-hmac-key",
    "CRM_INBOUND_SECRET": "example-inbound-key",
    "CRM_AUTHORIZATION": "Bearer example-bearer",
    "ANALYTICS_DSN": "host=warehouse user=loader password='example an pw'",
    "CDCSYNC_ADMIN_TOKEN": "example-admin-token",
}
EXAMPLE_SECRETS = [
    "example-src-pw",
    "example-hmac-key",
    "example-inbound-key",
    "example-bearer",
    "example an pw",
    "example-admin-token",
]

MINIMAL = """\
source:
  dsn: postgresql://cdc:{password}@db:5432/app
  tables: [public.customers]
kafka:
  bootstrap_servers: localhost:9092
  topic_prefix: app
registry:
  url: http://localhost:8081
"""


def write(tmp_path: Path, text: str, name: str = "cdcsync.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def minimal(tmp_path: Path, extra: str = "", password: str = "pw") -> Path:
    return write(tmp_path, MINIMAL.format(password=password) + extra)


def error_of(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


# --------------------------------------------------------------------------- the example


def test_the_example_config_loads_with_its_secrets_from_the_environment() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV)

    assert config.source.dsn.get_secret_value() == EXAMPLE_ENV["CDCSYNC_SOURCE_DSN"]
    assert config.source.tables == ["public.customers", "public.orders"]
    assert config.kafka.properties["linger.ms"] == 20
    crm = config.integrations["crm"]
    assert isinstance(crm.sink, HttpSinkConfig)
    assert crm.sink.secret is not None
    assert crm.sink.secret.get_secret_value() == "example-hmac-key"
    assert crm.dead_letter_topic == "app.dlq.crm"
    assert crm.group_id == "cdcsync.crm"
    analytics = config.integrations["analytics"]
    assert isinstance(analytics.mapper, DeclarativeMapping)
    assert analytics.mapper.fields["total"] == "amount"
    assert isinstance(analytics.sink, PostgresSinkConfig)
    assert analytics.sink.dsn.get_secret_value() == EXAMPLE_ENV["ANALYTICS_DSN"]
    assert isinstance(config.integrations["entities"].sink, KafkaSinkConfig)
    assert config.state_dsn() == config.source.dsn
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 8080)


def test_the_example_config_shows_no_secret_in_str_repr_or_json() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV)

    shown = str(config) + repr(config) + config.model_dump_json()
    for secret in EXAMPLE_SECRETS:
        assert secret not in shown
    revealed = config.model_dump_json(context={"reveal_secrets": True})
    for secret in EXAMPLE_SECRETS:
        assert secret in revealed


# --------------------------------------------------------------------------- errors


def test_a_missing_key_is_named_with_its_section(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.format(password="x").replace("  bootstrap_servers: localhost:9092\n", "")
    )

    message = error_of(path)

    assert message.startswith("kafka.bootstrap_servers: field required")
    assert f"{path}, line 4" in message


def test_a_table_without_schema_is_named_by_its_index(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.format(password="x").replace("[public.customers]", "[public.a, orders]")
    )

    message = error_of(path)

    assert message.startswith("source.tables[1]: 'orders' is not schema.table")
    assert "line 3" in message


def test_an_unknown_sink_type_lists_the_valid_ones(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "integrations:\n  crm:\n    topics: [app.public.customers]\n    mapper: m:f\n"
        "    sink: {type: smtp, url: 'https://crm/{key}'}\n",
    )

    assert error_of(path).startswith(
        "integrations.crm.sink.type: must be one of http, postgres, kafka"
    )


def test_a_misspelt_key_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    path = minimal(tmp_path, "admin:\n  lisen: 0.0.0.0:9000\n")

    assert error_of(path).startswith("admin.lisen: unknown key (did you mean 'listen'?)")


def test_several_errors_are_all_listed_one_per_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "source:\n  dsn: x\n  slot: Bad-Slot\n  publication: 'my pub'\n  tables: [a.b]\n"
        "kafka:\n  bootstrap_servers: k:9092\n  topic_prefix: 'app prefix'\n"
        "registry:\n  url: ftp://registry\n"
        "logging:\n  format: xml\n",
    )

    lines = error_of(path).splitlines()

    assert [line.split(":")[0] for line in lines] == [
        "source.slot",
        "source.publication",
        "kafka.topic_prefix",
        "registry.url",
        "logging.format",
    ]
    assert "must be 'human' or 'json'" in lines[-1]


def test_an_unknown_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    assert error_of(missing) == f"{missing}: no such configuration file"


def test_invalid_yaml_names_the_file_and_line_without_quoting_it(tmp_path: Path) -> None:
    path = write(tmp_path, "source:\n  slot: a\n  dsn: postgresql://u:yaml-leak@h/db: [\n")

    message = error_of(path)

    assert message.startswith(f"{path}, line 3")
    assert "invalid YAML" in message
    assert "yaml-leak" not in message


def test_a_duplicate_key_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = minimal(tmp_path, "admin:\n  listen: a:1\n  listen: b:2\n")

    assert error_of(path) == f"{path}, line 11: duplicate key admin.listen"


def test_a_non_secret_key_does_not_take_the_env_form(tmp_path: Path) -> None:
    path = minimal(tmp_path, "admin:\n  listen_env: LISTEN\n")

    assert "admin.listen_env: unknown key (listen is not a secret" in error_of(path)


def test_an_error_in_a_value_set_by_the_environment_names_the_variable(tmp_path: Path) -> None:
    message = error_of(minimal(tmp_path), {"CDCSYNC_SOURCE__SLOT": "No Good"})

    assert message == (
        "source.slot: 'No Good' is not a slot name (1 to 63 of a-z, 0-9, _) "
        "(from CDCSYNC_SOURCE__SLOT)"
    )


def test_a_misspelt_section_in_a_variable_names_the_variable(tmp_path: Path) -> None:
    message = error_of(minimal(tmp_path), {"CDCSYNC_SORCE__SLOT": "x"})

    assert message == "sorce: unknown key (did you mean 'source'?) (from CDCSYNC_SORCE__SLOT)"


def test_inconsistent_values_are_reported_on_the_right_key(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "integrations:\n  crm:\n    topics: [t]\n    mapper: m:f\n"
        "    sink: {type: kafka, topic: out}\n"
        "    retry: {initial_backoff_s: 10, max_backoff_s: 1}\n",
    )

    assert error_of(path).startswith(
        "integrations.crm.retry.max_backoff_s: must not be below initial_backoff_s"
    )


# --------------------------------------------------------------------------- environment


def test_environment_overrides_win_over_the_file_at_any_depth(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "integrations:\n  crm:\n    topics: [app.public.customers]\n    mapper: m:f\n"
        "    sink: {type: kafka, topic: crm}\n",
    )

    config = load_config(
        path,
        env={
            "CDCSYNC_SOURCE__SLOT": "orders_slot",
            "CDCSYNC_SOURCE__TABLES": "[public.a, public.b]",
            "CDCSYNC_SOURCE__TOMBSTONES_ON_DELETE": "false",
            "CDCSYNC_SOURCE__MAX_BATCH_EVENTS": "100",
            "CDCSYNC_INTEGRATIONS__CRM__PAUSED": "true",
            "CDCSYNC_INTEGRATIONS__CRM__RETRY__ATTEMPTS": "9",
            "CDCSYNC_INTEGRATIONS__CRM__TOPICS__0": "app.public.clients",
            "UNRELATED": "1",
            "CDCSYNC_CONFIG": "ignored: no double underscore",
        },
    )

    assert config.source.slot == "orders_slot"
    assert config.source.tables == ["public.a", "public.b"]
    assert config.source.tombstones_on_delete is False
    assert config.source.max_batch_events == 100
    assert config.integrations["crm"].paused is True
    assert config.integrations["crm"].retry.attempts == 9
    assert config.integrations["crm"].topics == ["app.public.clients"]


def test_dotted_property_names_come_from_upper_case_or_verbatim_variables(tmp_path: Path) -> None:
    config = load_config(
        minimal(tmp_path),
        env={
            "CDCSYNC_KAFKA__PROPERTIES__LINGER_MS": "5",
            "CDCSYNC_KAFKA__PROPERTIES__enable.idempotence": "true",
            "CDCSYNC_KAFKA__PROPERTIES__SASL_PASSWORD_ENV": "KAFKA_PW",
            "KAFKA_PW": "kafka-secret-pw",
        },
    )

    props = config.kafka.client_properties()
    assert props["linger.ms"] == 5
    assert props["enable.idempotence"] is True
    assert props["sasl.password"] == "kafka-secret-pw"
    assert props["bootstrap.servers"] == "localhost:9092"
    assert "kafka-secret-pw" not in str(config) + config.model_dump_json()


def test_a_config_can_come_from_the_environment_alone() -> None:
    config = load_config(
        None,
        env={
            "CDCSYNC_SOURCE__DSN": "postgresql://cdc:env-only-pw@db/app",
            "CDCSYNC_SOURCE__TABLES": "[public.t]",
            "CDCSYNC_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "CDCSYNC_KAFKA__TOPIC_PREFIX": "app",
            "CDCSYNC_REGISTRY__URL": "sqlite:///registry.db",
            "CDCSYNC_INTEGRATIONS__CRM": "{topics: [app.public.t], mapper: 'm:f', "
            "sink: {type: http, url: 'https://crm/{key}'}}",
        },
    )

    assert config.source.dsn.get_secret_value() == "postgresql://cdc:env-only-pw@db/app"
    assert config.registry.embedded_storage == "sqlite:///registry.db"
    assert config.integrations["crm"].dead_letter_topic == "app.dlq.crm"
    assert "env-only-pw" not in repr(config)


def test_a_secret_from_the_environment_is_taken_verbatim_not_parsed_as_yaml(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path), env={"CDCSYNC_ADMIN__TOKEN": "[not: a list] # x"})

    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == "[not: a list] # x"


def test_an_environment_override_replaces_the_files_secret_reference(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace("  dsn: postgresql://cdc:{password}@db:5432/app", "  dsn_env: UNSET_VAR"),
    )

    config = load_config(path, env={"CDCSYNC_SOURCE__DSN": "postgresql://over@db/app"})

    assert config.source.dsn.get_secret_value() == "postgresql://over@db/app"


# --------------------------------------------------------------------------- secrets


def test_secrets_come_from_env_and_from_files_without_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "state_dsn").write_text("postgresql://state:file-pw@db/state\n")
    (tmp_path / "registry_pw").write_text("registry-file-pw\r\n")
    path = minimal(
        tmp_path,
        "  username: reg\n  password_file: " + str(tmp_path / "registry_pw") + "\n"
        "state:\n  dsn_file: secrets/state_dsn\n  schema: sync_state\n"
        "admin:\n  token_env: ADMIN_TOKEN\n",
    )

    config = load_config(path, env={"ADMIN_TOKEN": "env-admin-token"})

    assert config.state_dsn().get_secret_value() == "postgresql://state:file-pw@db/state"
    assert config.state.schema_ == "sync_state"
    assert config.registry.password is not None
    assert config.registry.password.get_secret_value() == "registry-file-pw"
    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == "env-admin-token"


def test_a_missing_variable_or_file_names_the_key_and_source_but_no_value(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "admin:\n  token_env: NOT_SET_ANYWHERE\nstate:\n  dsn_file: /nonexistent/state_dsn\n",
    )

    lines = error_of(path).splitlines()

    assert lines[0].startswith("state.dsn_file: cannot read /nonexistent/state_dsn")
    assert lines[1].startswith("admin.token_env: environment variable NOT_SET_ANYWHERE is not set")


def test_giving_a_secret_twice_is_an_error(tmp_path: Path) -> None:
    path = minimal(tmp_path, "admin:\n  token: inline-token-value\n  token_env: ADMIN_TOKEN\n")

    message = error_of(path, {"ADMIN_TOKEN": "x"})

    assert message.startswith("admin.token: give only one of token, token_env")
    assert "inline-token-value" not in message


def test_secrets_never_appear_in_errors_or_their_tracebacks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "source:\n  dsn: postgresql://cdc:leaky-pw@db/app\n  tables: [nope]\n"
        "kafka:\n  bootstrap_servers: k:9092\n  topic_prefix: app\n"
        "  properties: {sasl.password: leaky-kafka-pw, linger.ms: [1]}\n"
        "registry:\n  url: 'htp://reg:leaky-reg-pw@registry:8081/'\n  password: [leaky-list]\n"
        "integrations:\n  crm:\n    topics: [t]\n    mapper: m:f\n"
        "    sink: {type: http, url: 'https://crm/{id}?token=leaky-token', secret: 5}\n",
    )

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    shown = "".join(traceback.format_exception(info.value))
    assert "registry.url" in shown
    assert "integrations.crm.sink.url" in shown
    for secret in ("leaky-pw", "leaky-kafka-pw", "leaky-reg-pw", "leaky-list", "leaky-token"):
        assert secret not in shown


def test_secrets_never_reach_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = minimal(
        tmp_path,
        "  username: reg\n  password_env: REG_PW\n",
        password="inline-logged-pw",
    )
    caplog.set_level(logging.DEBUG)

    config = load_config(
        path, env={"REG_PW": "env-logged-pw", "CDCSYNC_ADMIN__TOKEN": "tok-logged"}
    )
    logging.getLogger("test").info("loaded %s / %r", config, config)

    assert "REG_PW" in caplog.text  # the variable's name is logged, not its value
    for secret in ("inline-logged-pw", "env-logged-pw", "tok-logged"):
        assert secret not in caplog.text


def test_urls_with_credentials_are_shown_redacted_but_kept_intact(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "integrations:\n  crm:\n    topics: [t]\n    mapper: m:f\n"
        "    sink: {type: http, url: 'https://bot:url-pw@crm/{key}?token=url-token'}\n",
    )

    config = load_config(path, env={})
    sink = config.integrations["crm"].sink

    assert isinstance(sink, HttpSinkConfig)
    assert sink.url == "https://bot:url-pw@crm/{key}?token=url-token"
    shown = str(config) + repr(config) + config.model_dump_json()
    assert "https://bot:***@crm/{key}?token=***" in shown
    assert "url-pw" not in shown
    assert "url-token" not in shown


def test_secret_headers_are_protected_and_others_are_not(tmp_path: Path) -> None:
    path = minimal(
        tmp_path,
        "integrations:\n  crm:\n    topics: [t]\n    mapper: m:f\n"
        "    sink:\n      type: http\n      url: https://crm/{key}\n"
        "      headers: {Accept: application/json, X-Api-Key: header-key-value}\n",
    )

    sink = load_config(path, env={}).integrations["crm"].sink

    assert isinstance(sink, HttpSinkConfig)
    assert sink.headers["Accept"] == "application/json"
    assert sink.headers["X-Api-Key"] == SecretStr("header-key-value")


def test_exactly_once_derives_a_transactional_id(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path), env={"CDCSYNC_KAFKA__EXACTLY_ONCE": "true"})

    assert config.kafka.transactional_id == "cdcsync-app-cdcsync"


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path), env={})

    with pytest.raises(ValueError, match="frozen"):
        config.source.slot = "other"
    assert isinstance(config, Config)


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://cdc:s3cret@db:5432/app", "postgresql://cdc:***@db:5432/app"),
        (
            "postgres://cdc:p%40ss%2Fw@db/app?sslmode=require",
            "postgres://cdc:***@db/app?sslmode=require",
        ),
        ("postgresql://cdc:pa/ss@w@db/app", "postgresql://cdc:***@db/app"),
        (
            "postgresql://cdc@db/app?password=s3cret&sslmode=require",
            "postgresql://cdc@db/app?password=***&sslmode=require",
        ),
        ("postgresql://db/app", "postgresql://db/app"),
        ("host=db user=cdc password=s3cret dbname=app", "host=db user=cdc password=*** dbname=app"),
        (
            "host=db password = 'with spaces \\' and quote' dbname=app",
            "host=db password = *** dbname=app",
        ),
        ("password='unterminated secret", "password=***"),
        (
            "host=db application_name='password=x' dbname=app",
            "host=db application_name='password=x' dbname=app",
        ),
        ("https://bot:s3cret@crm.example/api/{key}", "https://bot:***@crm.example/api/{key}"),
        ("https://crm.example/api?token=s3cret&page=2", "https://crm.example/api?token=***&page=2"),
        ("https://crm.example:8443/users/a@b.c", "https://crm.example:8443/users/a@b.c"),
        (
            "cannot connect to postgresql://cdc:s3cret@db/app?sslmode=require: timeout",
            "cannot connect to postgresql://cdc:***@db/app?sslmode=require: timeout",
        ),
        (
            "bad conninfo \"host=db password='s 3' port=5\" near https://u:s3cret@h/x",
            'bad conninfo "host=db password=*** port=5" near https://u:***@h/x',
        ),
    ],
)
def test_redact_dsn_hides_the_password_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_redact_properties_hides_secret_librdkafka_properties() -> None:
    props = {
        "sasl.username": "cdc",
        "sasl.password": "s3cret",
        "ssl.key.password": "s3cret",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "sasl.oauthbearer.client.secret": "s3cret",
        "linger.ms": 5,
        "sasl.oauthbearer.token.endpoint.url": "https://idp:s3cret@idp.example/token",
    }

    redacted = redact_properties(props)

    assert redacted["sasl.username"] == "cdc"
    assert redacted["linger.ms"] == 5
    assert "s3cret" not in repr(redacted)
    assert "BEGIN PRIVATE KEY" not in repr(redacted)


def test_the_process_environment_is_used_when_no_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDCSYNC_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("CDCSYNC_TEST_ADMIN_TOKEN", "process-env-token")
    path = minimal(tmp_path, "admin:\n  token_env: CDCSYNC_TEST_ADMIN_TOKEN\n")

    config = load_config(path)

    assert config.logging.level == "DEBUG"
    assert config.admin.token == SecretStr("process-env-token")


def test_a_mapping_built_in_code_is_validated_like_a_file() -> None:
    data = {
        "source": {"dsn_env": "DEMO_DSN", "tables": ["public.t"]},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic_prefix": "demo"},
        "registry": {"url": "sqlite:///registry.db"},
        "state": {"dsn": "postgresql://state@db/s"},
    }

    config = parse_config(data, env={"DEMO_DSN": "postgresql://demo@db/app"})

    assert config.source.dsn == SecretStr("postgresql://demo@db/app")
    assert config.state_dsn() == SecretStr("postgresql://state@db/s")
    with pytest.raises(ConfigError, match=r"^source.dsn_env: environment variable DEMO_DSN"):
        parse_config(data, env={})


def test_debeziums_settings_have_debeziums_defaults_and_the_older_names_still_work(
    tmp_path: Path,
) -> None:
    source = load_config(minimal(tmp_path), env={}).source
    assert (source.time_precision_mode, source.decimal_handling_mode) == ("adaptive", "precise")
    assert (source.hstore_handling_mode, source.interval_handling_mode) == ("json", "numeric")
    assert source.binary_handling_mode == "bytes"
    assert source.provide_transaction_metadata is False
    assert source.skipped == frozenset({"t"})
    assert source.unavailable_value_placeholder == "__debezium_unavailable_value"
    older = "  decimal_handling: string\n  unavailable_value: gone\n"
    text = MINIMAL.format(password="pw").replace("  tables:", older + "  tables:")
    source = load_config(write(tmp_path, text), env={}).source
    assert (source.decimal_handling_mode, source.unavailable_value_placeholder) == (
        "string",
        "gone",
    )
    both = text.replace("  tables:", "  decimal_handling_mode: double\n  tables:")
    assert "set only one" in error_of(write(tmp_path, both))
