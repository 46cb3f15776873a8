"""Credentials in URLs (issue 23, item 5): :func:`catalog.redact.redact_url` and what the command lines print."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner

from catalog.redact import redact_url, redact_urls, redacted_cli

SECRET = "wJalr/K7MDENG+bPxRfi@CY"  # an AWS-like secret: '/', '+' and a raw '@'


@pytest.mark.parametrize("text, redacted", [
    ("s3://AKIA:SECRET@bucket/store", "s3://***@bucket/store"),
    (f"s3://AKIA:{SECRET}@bucket/store", "s3://***@bucket/store"),
    ("http://user:pass@host:8080/x", "http://***@host:8080/x"),
    ("https://token@host/x", "https://***@host/x"),
    ("gcs://me@example.org:pw@bucket/x", "gcs://***@bucket/x"),
    ("memory://KEY:SECRET@bucket/x", "memory://***@bucket/x"),
    ("error: 'file:///a' and 's3://K:S@b/c' and http://u:p@h/d, done", "error: 'file:///a' and 's3://***@b/c' and "
                                                                        "http://***@h/d, done"),
    ("store=s3://K:S@b/c:val", "store=s3://***@b/c:val"),
    ("s3://bucket/key@v2", "s3://bucket/key@v2"),  # an '@' in the key is no userinfo
    ("s3://bucket/store", "s3://bucket/store"),
    ("user@host:/path and a@b.org", "user@host:/path and a@b.org"),
    ("", ""),
])
def test_redact_url(text, redacted):
    assert redact_url(text) == redacted
    assert redact_url(redacted) == redacted


def test_redact_urls_copies_only_what_it_changes():
    state = {"w": torch.zeros(2)}
    value = {"config": {"store": ["s3://K:S@b/x", "local"], "steps": 3}, "model": state, "rng": ("MT", 1.5),
             "s3://K:S@b/key": 1}
    out = redact_urls(value)
    assert out["config"] == {"store": ["s3://***@b/x", "local"], "steps": 3} and "s3://***@b/key" in out
    assert out["model"] is state and out["rng"] is value["rng"]  # untouched containers are the same objects
    assert value["config"]["store"][0] == "s3://K:S@b/x"  # the input is not changed
    clean = {"a": [1, "b"], "c": ("d",)}
    assert redact_urls(clean) is clean


def _group() -> click.Group:
    class Group(click.Group):
        def invoke(self, ctx):
            with redacted_cli():
                return super().invoke(ctx)

    @click.group(cls=Group)
    def main() -> None:
        pass

    @main.command()
    @click.argument("what")
    @click.argument("store")
    def run(what: str, store: str) -> None:
        click.echo(f"opening {store}")
        print(f"print {store}")
        click.echo(f"stderr {store}", err=True)
        if what == "click":
            raise click.ClickException(f"{store}: no catalog")
        if what == "usage":
            raise click.UsageError(f"{store}: bad")
        if what == "crash":
            raise RuntimeError(f"cannot open {store!r}")
        if what == "plain":
            raise KeyError("no url here")

    return main


@pytest.mark.parametrize("what, status", [("ok", 0), ("click", 1), ("usage", 2), ("crash", 1)])
def test_command_line_says_no_secret(what, status):
    res = CliRunner().invoke(_group(), ["run", what, f"s3://AKIA:{SECRET}@bucket/store"])
    text = res.output + res.stderr
    assert res.exit_code == status, text
    assert "s3://***@bucket/store" in text and "SECRET" not in text and SECRET not in text, text
    assert "opening s3://***@bucket/store" in text and "print s3://***@bucket/store" in text
    if what == "crash":
        assert "Traceback" in text and "RuntimeError: cannot open 's3://***@bucket/store'" in text


def test_an_exception_without_a_url_goes_on_unchanged():
    res = CliRunner().invoke(_group(), ["run", "plain", "s3://bucket/store"])
    assert isinstance(res.exception, KeyError)
