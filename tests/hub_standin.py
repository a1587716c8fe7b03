"""A recording stand-in for `huggingface_hub.HfApi`: the network boundary, and the only thing the hub tests replace.

`Recorder().install(monkeypatch)` puts it where `finch.observers.hub` gets `HfApi`. Each `upload_folder` call is
recorded with the files it would send, chosen by huggingface_hub's own pattern filter (`filter_repo_objects` plus
upload_folder's default ignore patterns) and read at call time, as the real client reads them. `fail(upload)` decides
which uploads raise the hub's HTTP error instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from httpx2 import Request  # the HTTP client huggingface_hub's errors are built on
from huggingface_hub import CommitInfo, RepoUrl
from huggingface_hub.errors import HfHubHTTPError, Response
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects


@dataclass
class RecordedUpload:
    repo_id: str
    path_in_repo: str
    message: str
    revision: str | None
    files: dict[str, bytes]  # path in the repository -> content
    failed: bool = False

    @property
    def names(self) -> set[str]:
        return set(self.files)


@dataclass
class Recorder:
    fail: Callable[[RecordedUpload], bool] = lambda upload: False
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    uploads: list[RecordedUpload] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)  # ("upload", path_in_repo, message), and the tests' own
    tokens: list[str | None] = field(default_factory=list)
    gate: threading.Event | None = None  # set: uploads wait for it (to hold one in flight)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, monkeypatch: Any) -> Recorder:
        import finch.observers.hub

        monkeypatch.setattr(finch.observers.hub, "HfApi", self.api_class())
        return self

    def api_class(self) -> type:
        recorder = self

        class RecordingHfApi:
            def __init__(self, token: str | None = None, **kwargs: Any) -> None:
                recorder.tokens.append(token)

            def create_repo(self, repo_id: str, private: bool | None = None, exist_ok: bool = False,
                            **kwargs: Any) -> RepoUrl:
                recorder.calls.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}))
                full = repo_id if "/" in repo_id else f"someone/{repo_id}"
                return RepoUrl(f"https://huggingface.co/{full}")

            def create_branch(self, repo_id: str, branch: str, exist_ok: bool = False, **kwargs: Any) -> None:
                recorder.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch}))

            def upload_folder(self, *, repo_id: str, folder_path: str, path_in_repo: str | None = None,
                              commit_message: str | None = None, revision: str | None = None,
                              allow_patterns: Any = None, ignore_patterns: Any = None, **kwargs: Any) -> CommitInfo:
                if recorder.gate is not None:
                    recorder.gate.wait(30)
                folder = Path(folder_path)
                relative = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
                ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
                chosen = filter_repo_objects(relative, allow_patterns=allow_patterns,
                                             ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
                prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
                upload = RecordedUpload(repo_id, path_in_repo or "", commit_message or "", revision,
                                        {prefix + name: relative[name].read_bytes() for name in chosen})
                upload.failed = recorder.fail(upload)
                with recorder.lock:
                    recorder.uploads.append(upload)
                    recorder.calls.append(("upload_folder", {"path_in_repo": upload.path_in_repo,
                                                             "message": upload.message, "failed": upload.failed}))
                    recorder.events.append(("upload", upload.path_in_repo, upload.message))
                if upload.failed:
                    raise HfHubHTTPError("503 Server Error: Service Unavailable", response=Response(
                        503, request=Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main")))
                number = len(recorder.uploads)
                return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{number:040x}",
                                  commit_message=upload.message, commit_description="", oid=f"{number:040x}")

        return RecordingHfApi

    def succeeded(self) -> list[RecordedUpload]:
        return [u for u in self.uploads if not u.failed]
