"""The S3 client resolves as plain boto3 does (AWS_REGION, AWS_ENDPOINT_URL_S3, AWS_PROFILE, roles), with the
VIDEOSCORE_S3_* settings as overrides, and an empty VIDEOSCORE_S3_* variable meaning unset.

boto3 reads its environment when the client is made; no request is sent, so no network is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from videoscore.core.settings import Settings
from videoscore.worker.video.storage import make_s3_client

AWS_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


@pytest.fixture(autouse=True)
def clean_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS variable, no ~/.aws of the machine running the tests: each test sets what it means."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("VIDEOSCORE_S3_"):
            monkeypatch.delenv(name)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    return config


def test_the_region_comes_from_aws_default_region_when_videoscore_sets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert make_s3_client(Settings()).meta.region_name == "eu-west-1"  # was us-east-1, our old default


def test_without_any_region_boto3s_own_default_applies() -> None:
    assert make_s3_client(Settings()).meta.region_name == "us-east-1"  # S3's global one


def test_aws_region_is_honoured_before_aws_default_region_as_the_aws_cli_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 (1.44) itself reads only AWS_DEFAULT_REGION; the AWS CLI v2 and the other SDKs read AWS_REGION first
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert make_s3_client(Settings()).meta.region_name == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert make_s3_client(Settings()).meta.region_name == "ap-south-1"
    monkeypatch.setenv("VIDEOSCORE_S3_REGION", "us-west-2")
    assert make_s3_client(Settings()).meta.region_name == "us-west-2"


def test_videoscore_s3_region_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("VIDEOSCORE_S3_REGION", "us-west-2")
    assert make_s3_client(Settings()).meta.region_name == "us-west-2"


def test_the_endpoint_comes_from_aws_endpoint_url_s3_or_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    assert make_s3_client(Settings()).meta.endpoint_url == "http://minio.internal:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.internal:9000")
    assert make_s3_client(Settings()).meta.endpoint_url == "http://s3.internal:9000"
    monkeypatch.setenv("VIDEOSCORE_S3_ENDPOINT_URL", "http://override:9000")
    assert make_s3_client(Settings()).meta.endpoint_url == "http://override:9000"


def test_an_empty_videoscore_s3_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.setenv(f"VIDEOSCORE_S3_{name}", "")
    settings = Settings()
    assert (settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id,
            settings.s3_secret_access_key) == (None, None, None, None)
    client = make_s3_client(settings)  # was ValueError: Invalid endpoint
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_region_and_endpoint_come_from_the_profile_named_by_aws_profile(
        monkeypatch: pytest.MonkeyPatch, clean_aws_environment: Path) -> None:
    clean_aws_environment.write_text(
        "[profile videos]\nregion = eu-central-1\nendpoint_url = http://profile-s3:9000\n")
    monkeypatch.setenv("AWS_PROFILE", "videos")
    client = make_s3_client(Settings())
    assert (client.meta.region_name, client.meta.endpoint_url) == ("eu-central-1", "http://profile-s3:9000")


def test_credentials_come_from_boto3s_chain_unless_videoscore_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert make_s3_client(Settings())._request_signer._credentials.access_key == "from-env"
    monkeypatch.setenv("VIDEOSCORE_S3_ACCESS_KEY_ID", "from-videoscore")
    monkeypatch.setenv("VIDEOSCORE_S3_SECRET_ACCESS_KEY", "videoscore-secret")
    assert make_s3_client(Settings())._request_signer._credentials.access_key == "from-videoscore"
