"""``ttdist generate --chat`` and ``ttdist serve``'s public-API flags: usage errors are one line, exit 2."""

from __future__ import annotations

import pytest

from ttdist.cli import build_parser, main


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--system", "be brief"], "--system needs --chat"),
    (["generate", "--chat", "--token-ids", "1,2"], "--chat takes a text prompt"),
    (["serve", "--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without an API key"),
    (["serve", "--tls-cert", "missing.pem"], "TLS needs both --tls-cert and --tls-key"),
    (["serve", "--http-port", "-5"], "--http-port must be -1 (off)"),
    (["serve", "--api-key-file", "/nonexistent/keys"], "--api-key-file: cannot read"),
])
def test_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_serve_flags_build_the_api_config(tmp_path, monkeypatch):
    from ttdist.cli.serve import config_from_args

    keys = tmp_path / "keys"
    keys.write_text("# ops\nk1\n\nk2\n")
    monkeypatch.setenv("TTDIST_API_KEY", "k3")
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--api-key", "k0", "--api-key-file", str(keys),
                                      "--http-port", "-1"])
    api = config_from_args(args).api
    assert api.api_keys == ("k0", "k1", "k2", "k3") and api.http_port is None
    monkeypatch.delenv("TTDIST_API_KEY")
    open_args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--insecure"])
    assert config_from_args(open_args).api.api_keys == () and config_from_args(open_args).api.http_port == 8000


def test_spec_api_mapping(tmp_path):
    from ttdist.runtime.config import ClusterConfigError
    from ttdist.runtime.cluster_file import load_spec, parse_spec

    keys = tmp_path / "keys"
    keys.write_text("k2\n")
    api = parse_spec({"host": "0.0.0.0", "api": {"http_port": -1, "api_keys": ["k1"], "api_key_file": str(keys)}}).config.api
    assert api.api_keys == ("k1", "k2") and api.http_port is None
    assert load_spec("cluster/local.yaml").config.api.http_port == 8000
    assert parse_spec({}).config.api.http_port == 8000                  # specs serve HTTP like ttdist serve
    for raw, message in [({"api": {"bogus": 1}}, "unknown api setting 'bogus'"),
                         ({"host": "10.0.0.5"}, "refusing to serve on 10.0.0.5"),
                         ({"api": {"api_keys": "k"}}, "api_keys must be a list")]:
        with pytest.raises(ClusterConfigError, match=message):
            parse_spec(raw)
    assert parse_spec({"host": "10.0.0.5", "api": {"insecure": True}}).config.api.insecure
