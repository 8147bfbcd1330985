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
