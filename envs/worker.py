"""A vector env whose sub-envs all live in ONE worker process (``--vector-strategy worker``),
so they step on one core while this process updates the agent on the other.

gymnasium's AsyncVectorEnv gives every sub-env a process of its own: on a 2-core machine
ten env processes and the learner contend for the cores. Here one child process holds the
benchmark's ordinary SyncVectorEnv and every call is forwarded to it over a pipe;
``step_async`` returns at once, so the trainer's update (``Trainer._vector_step``) runs while
the envs step. Results travel pickled (MT10: 10x39 floats a step, well under a millisecond),
so observations and infos come back exactly as the sync env returns them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import signal
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import gymnasium as gym

CLOSE_TIMEOUT_S = 5.0
"""How long ``close()`` waits for the worker to close its envs before terminating it."""

# What users of a VectorEnv read without calling it: copied once from the child at start.
_ATTRIBUTES = ("num_envs", "single_observation_space", "single_action_space",
               "observation_space", "action_space", "metadata", "spec")


class EnvWorkerDied(ConnectionError):
    """The worker process is gone (killed, crashed). A ConnectionError, so the trainer's
    ``guard.ENV_FAILURES`` catches it: checkpoint, stop, ``--resume`` with a fresh worker."""


class EnvWorkerError(RuntimeError):
    """An exception in the worker whose own type could not be rebuilt in this process."""


class WorkerVectorEnv(gym.vector.VectorEnv):
    """``make_envs()`` (picklable: module-level functions and ``functools.partial``) built
    and run in one child process; the same attributes and results as the env it builds."""

    def __init__(self, make_envs: Callable[[], gym.vector.VectorEnv]):
        # "spawn": the child is a fresh interpreter. A fork would copy this process's torch
        # thread pools and their locks (a forked child can deadlock on them) and any
        # MuJoCo/OpenGL state; "forkserver" would keep a server process alive just to fork
        # this one child. The cost, imports in the child, is paid once per run.
        ctx = mp.get_context("spawn")
        self._pipe, child_pipe = ctx.Pipe()
        self._process = ctx.Process(target=_work, args=(make_envs, child_pipe),
                                    name="env-worker", daemon=True)
        self._process.start()
        child_pipe.close()  # only the child holds its end now: its death reads as EOF here
        # At interpreter exit (a run that died of an exception, the envs never closed)
        # multiprocessing would SIGTERM the worker, which ignores it, and join it forever:
        # end it first (finalizers registered after multiprocessing's exit hook run before it).
        weakref.finalize(self, _end_worker, self._process, self._pipe)
        self._stepping = False
        try:
            attributes = self._receive()
        except BaseException:
            self.close(terminate=True)
            raise
        for name, value in attributes.items():
            setattr(self, name, value)
        self.render_mode = None  # render() is not forwarded

    # ---- the VectorEnv API, forwarded --------------------------------------------------
    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        return self._request("reset", seed=seed, options=options)

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Send the actions and return at once; the envs step while the caller works."""
        self._send("step", actions)
        self._stepping = True

    def step_wait(self):
        if not self._stepping:
            raise gym.error.NoAsyncCallError(
                "step_wait() without a step_async() before it", "step")
        self._stepping = False
        return self._receive()

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return self._request("call", name, *args, **kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self._request("get_attr", name)

    def set_attr(self, name: str, values: Any) -> None:
        self._request("set_attr", name, values)

    def close_extras(self, timeout: float = CLOSE_TIMEOUT_S, terminate: bool = False,
                     **kwargs: Any) -> None:
        """Ask the worker to close its envs (``terminate``: don't); a worker that has not
        exited within ``timeout`` seconds is terminated. ``close()`` runs this once."""
        if not terminate and self._process.is_alive():
            with contextlib.suppress(EOFError, OSError):
                if self._stepping and self._pipe.poll(timeout):  # the step in flight
                    self._pipe.recv()
                self._pipe.send(("close", (), {}))
                if self._pipe.poll(timeout):
                    self._pipe.recv()
        self._stepping = False
        self._process.join(0 if terminate else timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        if self._process.is_alive():  # SIGTERM ignored or the process stuck
            self._process.kill()
            self._process.join()
        self._pipe.close()

    def __del__(self):
        if hasattr(self, "_process") and not self.closed:
            with contextlib.suppress(Exception):
                self.close(terminate=True)

    # ---- the pipe -----------------------------------------------------------------------
    def _request(self, command: str, /, *args: Any, **kwargs: Any) -> Any:
        self._send(command, *args, **kwargs)
        return self._receive()

    def _send(self, command: str, /, *args: Any, **kwargs: Any) -> None:
        if self.closed:
            raise gym.error.ClosedEnvironmentError(
                f"{command}() on a closed {type(self).__name__}")
        if self._stepping:  # its answer would be read as this command's
            raise gym.error.AlreadyPendingCallError(
                f"{command}() while a step_async() awaits its step_wait()", "step")
        try:
            self._pipe.send((command, args, kwargs))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise self._died() from e

    def _receive(self) -> Any:
        try:
            ok, payload = self._pipe.recv()
        except (EOFError, ConnectionResetError) as e:
            raise self._died() from e
        if not ok:
            raise _rebuild(*payload)
        return payload

    def _died(self) -> EnvWorkerDied:
        self._process.join(1)  # its exit code, when it has one
        return EnvWorkerDied(f"the env worker process (pid {self._process.pid}) died "
                             f"(exit code {self._process.exitcode})")


def _end_worker(process: mp.Process, pipe) -> None:
    """Kill the worker if it is still there (its envs hold nothing a checkpoint needs)."""
    if process.is_alive():
        process.kill()
        process.join()
    pipe.close()


def _work(make_envs: Callable[[], gym.vector.VectorEnv], pipe) -> None:
    """The child: build the envs, send their attributes, then answer commands until
    ``close`` or until the parent is gone."""
    # Ctrl-C, and a SIGTERM sent to the process group (a scheduler, `timeout`), reach this
    # process too; the parent alone decides when a run stops (it saves a checkpoint first)
    # and then closes this one. If the parent dies, the pipe's EOF ends this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    envs = None
    try:
        try:
            envs = make_envs()
        except Exception as e:
            pipe.send((False, _error(e)))
            return
        _reply(pipe, _attributes, envs)  # the parent waits for this first answer
        while envs is not None:
            command, args, kwargs = pipe.recv()
            if command == "close":
                envs, closing = None, envs
                _reply(pipe, closing.close)
            else:
                _reply(pipe, _run, envs, command, args, kwargs)
    except (EOFError, ConnectionError):  # the parent is gone: nobody left to answer
        pass
    finally:
        if envs is not None:
            envs.close()


def _run(envs: gym.vector.VectorEnv, command: str, args: tuple, kwargs: dict) -> Any:
    return getattr(envs, command)(*args, **kwargs)


def _attributes(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    values = {name: getattr(envs, name, None) for name in _ATTRIBUTES}
    try:
        pickle.dumps(values["spec"])
    except Exception:  # a spec holding a lambda: not needed to step the envs
        values["spec"] = None
    return values


def _reply(pipe, compute: Callable[..., Any], *args: Any) -> None:
    """Send ``(True, compute(*args))``, or ``(False, error)`` when it raises or its result
    does not pickle (pickling happens before anything is written, so the pipe stays clean)."""
    try:
        answer = (True, compute(*args))
    except Exception as e:
        answer = (False, _error(e))
    try:
        pipe.send(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        pipe.send((False, _error(e)))


def _error(e: Exception) -> tuple[Exception | None, str, str, str]:
    """The exception (when it survives pickling), its type's name, message and traceback."""
    try:
        exc = pickle.loads(pickle.dumps(e))
    except Exception:
        exc = None
    return exc, type(e).__name__, str(e), traceback.format_exc()


def _rebuild(exc: Exception | None, kind: str, message: str, trace: str) -> Exception:
    """The child's exception, of its own type where it can be rebuilt (callers catch
    AttributeError from get_attr, ConnectionError...), its message followed by the child's
    traceback."""
    text = f"{message}\n\nraised in the env worker process:\n{trace}"
    if exc is not None:
        with contextlib.suppress(Exception):
            return type(exc)(text)
    return EnvWorkerError(f"{kind}: {text}")
