"""deploy() never waits on an actor without a timeout, and says which call timed out."""

from __future__ import annotations

import ast
import inspect

import pytest
from ray.exceptions import GetTimeoutError

from ttdist.router import deploy
from ttdist.router.deploy import ActorTimeoutError, DeployError, get_within


def test_every_ray_get_in_deploy_has_a_timeout():
    tree = ast.parse(inspect.getsource(deploy))
    gets = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "wait") and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"]
    assert gets, "deploy no longer calls ray.get: this check looks at nothing"
    untimed = [ast.unparse(node) for node in gets if not any(k.arg == "timeout" for k in node.keywords)]
    assert untimed == []


def test_a_call_past_its_timeout_names_the_call(monkeypatch):
    seen = {}

    def never(refs, timeout=None):
        seen["timeout"] = timeout
        raise GetTimeoutError("Get timed out: some object(s) not ready.")

    monkeypatch.setattr(deploy.ray, "get", never)
    with pytest.raises(ActorTimeoutError, match=r"the coordinator's snapshot\(\) did not answer within 2.5 s") as err:
        get_within(object(), 2.5, "the coordinator's snapshot()")
    assert seen["timeout"] == 2.5
    assert isinstance(err.value, DeployError) and isinstance(err.value, TimeoutError)   # the CLI reports DeployError


def test_an_answer_in_time_is_returned(monkeypatch):
    monkeypatch.setattr(deploy.ray, "get", lambda refs, timeout=None: [7, 8])
    assert get_within([object(), object()], 1.0, "the routers' start()") == [7, 8]
