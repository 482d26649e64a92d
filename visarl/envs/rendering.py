"""Fast headless MuJoCo rendering on the CPU, upright frames, and pinhole projection of 3-D points.

Why not gymnasium's render path: it renders with shadows, reflections and 4x multisampling into a
640x480 offscreen buffer and shrinks it, work that a software rasterizer (Mesa llvmpipe, the headless CPU case)
pays for on every frame. A bare ``mujoco.Renderer`` at the target size with those features off is more than an
order of magnitude faster (``benchmarks/render.py`` times both).

GL backend: MuJoCo picks its GL backend from ``MUJOCO_GL`` when ``mujoco`` is first imported, so
:func:`configure_gl` must run before that (``visarl.envs`` calls it on import). It keeps a user-set
``MUJOCO_GL``; otherwise it picks EGL when an EGL context can be created (probed through ctypes, so
PyOpenGL is not yet bound to a platform) and OSMesa otherwise.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import mujoco

_HEADLESS_BACKENDS = ("egl", "osmesa")
_configured: str | None = None
_open_renderers: weakref.WeakSet[FrameRenderer] = weakref.WeakSet()
_atexit_registered = False


def _egl_can_create_context() -> bool:
    """Try to create (and destroy) a headless EGL context on an EGL device, as ``mujoco.egl`` would.

    Uses ctypes against libEGL instead of ``mujoco.egl`` because importing that binds PyOpenGL to
    the EGL platform for the life of the process, which would rule out the OSMesa fallback.
    """
    path = ctypes.util.find_library("EGL") or "libEGL.so.1"
    try:
        egl = ctypes.CDLL(path)
    except OSError:
        return False
    vp, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32
    egl.eglGetProcAddress.restype = vp
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    q_addr = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
    d_addr = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
    if not q_addr or not d_addr:
        return False
    query_devices = ctypes.CFUNCTYPE(u32, i32, ctypes.POINTER(vp), ctypes.POINTER(i32))(q_addr)
    get_display = ctypes.CFUNCTYPE(vp, u32, vp, vp)(d_addr)
    egl.eglInitialize.argtypes = [vp, vp, vp]
    egl.eglInitialize.restype = u32
    egl.eglChooseConfig.argtypes = [vp, ctypes.POINTER(i32), ctypes.POINTER(vp), i32, ctypes.POINTER(i32)]
    egl.eglChooseConfig.restype = u32
    egl.eglBindAPI.argtypes = [u32]
    egl.eglCreateContext.argtypes = [vp, vp, vp, vp]
    egl.eglCreateContext.restype = vp
    egl.eglDestroyContext.argtypes = [vp, vp]

    devices = (vp * 8)()
    n = i32(0)
    if not query_devices(8, devices, ctypes.byref(n)):
        return False
    # The attributes mujoco.egl asks for: RGBA8, depth 24, stencil 8, pbuffer, desktop OpenGL.
    attrs = [0x3024, 8, 0x3023, 8, 0x3022, 8, 0x3021, 8, 0x3025, 24, 0x3026, 8]
    attrs += [0x303F, 0x308E, 0x3033, 0x0001, 0x3040, 0x0008, 0x3038]
    attr_arr = (i32 * len(attrs))(*attrs)
    for i in range(n.value):
        display = get_display(0x313F, devices[i], None)  # EGL_PLATFORM_DEVICE_EXT
        if not display or not egl.eglInitialize(display, None, None):
            continue
        config, nconf = vp(), i32(0)
        if not egl.eglChooseConfig(display, attr_arr, ctypes.byref(config), 1, ctypes.byref(nconf)) or nconf.value < 1:
            continue
        egl.eglBindAPI(0x30A2)  # EGL_OPENGL_API
        context = egl.eglCreateContext(display, config, None, None)
        if context:
            egl.eglDestroyContext(display, context)
            return True
    return False


def choose_backend(environ: dict[str, str] | os._Environ, egl_works: Callable[[], bool]) -> str | None:
    """The GL backend to use: a user-set ``MUJOCO_GL`` (or headless ``PYOPENGL_PLATFORM``), else EGL if
    ``egl_works()``, else OSMesa if its library is installed, else None (nothing headless works)."""
    user = environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        return user
    platform = environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if platform in _HEADLESS_BACKENDS:
        return platform
    if egl_works():
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


def _load_triton_first() -> None:
    """Import Triton (shipped with CUDA builds of torch) before Mesa's GL libraries are loaded.

    Mesa's software rasterizer (llvmpipe) and Triton each link their own LLVM. With Mesa loaded first,
    a later ``import triton`` (pulled in by torchvision.ops or torch.compile) segfaults the process;
    in the other order both work. Costs about 0.2 s once per process.
    """
    try:
        import triton  # noqa: F401
    except Exception:  # CPU builds of torch have no triton; nothing to protect then
        pass


def configure_gl() -> str:
    """Choose MuJoCo's headless GL backend before ``mujoco`` is imported; return the backend's name.

    See :func:`choose_backend`. Also defaults ``LP_NUM_THREADS=0`` (Mesa llvmpipe rasterizes in the
    calling thread): at 64x64 its worker threads cost more than they save and oversubscribe the cores
    when several env processes render at once.
    """
    global _configured
    if _configured is not None:
        return _configured
    _load_triton_first()
    os.environ.setdefault("LP_NUM_THREADS", "0")
    backend = choose_backend(os.environ, _egl_can_create_context)
    if backend is None:
        # Leave MUJOCO_GL unset: MUJOCO_GL=osmesa without libOSMesa would break ``import mujoco``
        # itself, while this way only creating a renderer fails (with a message saying why).
        warnings.warn("no headless GL found (EGL cannot create a context, OSMesa missing)", stacklevel=2)
        backend = "glfw"
    else:
        os.environ["MUJOCO_GL"] = backend
        if backend in _HEADLESS_BACKENDS:
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if "mujoco" in sys.modules:
        backend = _adopt_backend_late(backend)
    _configured = backend
    return backend


def _adopt_backend_late(backend: str) -> str:
    """``mujoco`` was imported before us: it already chose a backend from the ``MUJOCO_GL`` it saw then.

    If that was the unset default (GLFW, which needs a display) and PyOpenGL is not yet bound to a
    platform, point ``mujoco.gl_context.GLContext`` (looked up on each ``Renderer`` creation) at the
    headless backend; otherwise keep what mujoco chose and say so.
    """
    import mujoco.gl_context as glc

    chosen = getattr(glc, "_MUJOCO_GL", "")
    if chosen in _HEADLESS_BACKENDS or chosen == backend:
        return chosen
    if backend in _HEADLESS_BACKENDS and "OpenGL" not in sys.modules:
        if backend == "egl":
            from mujoco.egl import GLContext
        else:
            from mujoco.osmesa import GLContext
        glc.GLContext = GLContext
        return backend
    warnings.warn(
        f"mujoco was imported before visarl.envs with MUJOCO_GL={chosen or '<unset>'}; rendering uses that "
        f"backend. Import visarl.envs first or set MUJOCO_GL=egl to render headless.",
        stacklevel=3,
    )
    return chosen or "glfw"


# --------------------------------------------------------------------------------------------------
# camera model and projection


class CameraModel(NamedTuple):
    """A fixed pinhole camera as MuJoCo renders it, plus the 180-degree turn that makes frames upright.

    MuJoCo cameras look along their local -z with x to the right and y up; ``fovy`` is the vertical
    field of view and pixels are square (focal length ``f = (H / 2) / tan(fovy / 2)`` in pixels).
    """

    pos: np.ndarray
    """Camera position in world coordinates, [3] (``data.cam_xpos``)."""
    mat: np.ndarray
    """Camera-to-world rotation, [3, 3]; columns are the camera's x, y, z axes (``data.cam_xmat``)."""
    fovy: float
    """Vertical field of view in degrees (``model.cam_fovy``)."""
    height: int
    width: int
    rotate_180: bool
    """Whether frames are turned by 180 degrees to be upright (the camera's up axis points down)."""

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [N, 3] to pixels of the upright frame.

        Returns ``xy`` [N, 2] (x = column, y = row, pixel centres at integers, so pixel ``(r, c)``
        covers ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``) and the depth along the view axis [N]
        (positive in front of the camera).
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        local = (points - self.pos) @ self.mat  # [N, 3] in camera axes
        depth = -local[:, 2]
        f = 0.5 * self.height / np.tan(np.deg2rad(self.fovy) / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = (self.width - 1) / 2 + f * local[:, 0] / depth
            y = (self.height - 1) / 2 - f * local[:, 1] / depth
        if self.rotate_180:
            x, y = self.width - 1 - x, self.height - 1 - y
        return np.stack([x, y], axis=1), depth

    def to_dict(self) -> dict[str, float | int | bool | list[float]]:
        """Plain numbers, e.g. to store beside frames (HDF5 attributes, JSON)."""
        return {**self._asdict(), "pos": self.pos.tolist(), "mat": self.mat.ravel().tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> CameraModel:
        """Inverse of :meth:`to_dict`."""
        return cls(
            pos=np.asarray(d["pos"], dtype=np.float64).reshape(3),
            mat=np.asarray(d["mat"], dtype=np.float64).reshape(3, 3),
            fovy=float(d["fovy"]),
            height=int(d["height"]),
            width=int(d["width"]),
            rotate_180=bool(d["rotate_180"]),
        )

    def in_frame(self, xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """[N] bool: in front of the camera and inside the image (the nearest pixel exists)."""
        x, y = xy[:, 0], xy[:, 1]
        return (depth > 0) & (x >= -0.5) & (x < self.width - 0.5) & (y >= -0.5) & (y < self.height - 0.5)


def camera_model(model: mujoco.MjModel, data: mujoco.MjData, camera: str, height: int, width: int) -> CameraModel:
    """Read a camera's pose and field of view from a simulated state (after ``mj_forward``)."""
    cam_id = model.camera(camera).id
    mat = data.cam_xmat[cam_id].reshape(3, 3).copy()
    # Meta-World's corner cameras are set up with their y axis pointing down in the world, so the
    # raw frame shows the scene upside down; a 180-degree turn (not a flip, which would mirror it)
    # makes it upright.
    return CameraModel(
        pos=data.cam_xpos[cam_id].copy(),
        mat=mat,
        fovy=float(model.cam_fovy[cam_id]),
        height=height,
        width=width,
        rotate_180=bool(mat[2, 1] < 0),
    )


# --------------------------------------------------------------------------------------------------
# renderer


class FrameRenderer:
    """One lean offscreen ``mujoco.Renderer`` for one camera, returning upright frames.

    Shadows, reflections, skybox and multisampling are off unless asked for: each costs time on a
    software rasterizer (shadows the most) and adds little at 64x64.

    Several of these can share a process: ``mujoco.Renderer`` makes its GL context current on every
    render. (The frame corruption reported with several envs per process comes from gymnasium's
    offscreen viewer, which makes its context current only once, when created; so a gymnasium
    renderer next to this one draws into whichever context was current last.)
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        camera: str,
        height: int,
        width: int,
        *,
        shadows: bool = False,
        reflections: bool = False,
        skybox: bool = False,
        multisample: bool = False,
    ) -> None:
        configure_gl()
        import mujoco

        if camera not in [model.camera(i).name for i in range(model.ncam)]:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"unknown camera {camera!r}; the model has {names}")
        self.camera = camera
        self.height, self.width = height, width
        # Both are read when the GL context is made: multisampling off (MuJoCo's default is 4
        # samples), and the offscreen buffer at least as big as the frame.
        if not multisample:
            model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as e:
            raise RuntimeError(
                f"cannot create a MuJoCo renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({e}); "
                "headless rendering needs EGL (libEGL + Mesa) or OSMesa"
            ) from e
        _close_at_exit(self)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = reflections
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = skybox
        self._rotate: bool | None = None
        self._release_context()  # creating the renderer made its context current

    def camera_model(self, model: mujoco.MjModel, data: mujoco.MjData) -> CameraModel:
        """The camera's current pinhole model at this renderer's size."""
        cam = camera_model(model, data, self.camera, self.height, self.width)
        if self._rotate is None:
            # Fix the turn once, so a moving (tracking) camera never flips between frames.
            self._rotate = cam.rotate_180
        return cam._replace(rotate_180=self._rotate)

    def _upright(self, image: np.ndarray, data: mujoco.MjData) -> np.ndarray:
        if self._rotate is None:
            self.camera_model(self._renderer.model, data)
        return np.ascontiguousarray(image[::-1, ::-1]) if self._rotate else image

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """Upright RGB frame [H, W, 3] uint8 of the simulation state in ``data``."""
        return self._render(data, None)

    def render_depth(self, data: mujoco.MjData) -> np.ndarray:
        """Upright depth [H, W] float32: metres along the view axis to the nearest surface."""
        return self._render(data, "depth")

    def render_segmentation(self, data: mujoco.MjData) -> np.ndarray:
        """Upright segmentation [H, W, 2] int32: (object id, mjtObj type) per pixel, -1 for background."""
        return self._render(data, "segmentation")

    def _render(self, data: mujoco.MjData, mode: str | None) -> np.ndarray:
        self._check_open()
        r = self._renderer
        if mode == "depth":
            r.enable_depth_rendering()
        elif mode == "segmentation":
            r.enable_segmentation_rendering()
        try:
            r.update_scene(data, camera=self.camera)
            return self._upright(r.render(), data)  # mujoco.Renderer makes our context current first
        finally:
            r.disable_depth_rendering()
            r.disable_segmentation_rendering()
            self._release_context()

    def _release_context(self) -> None:
        """Leave no GL context current between renders.

        gymnasium's renderer frees its ``MjrContext`` when garbage-collected, in whatever context is
        current at that moment; when that was ours, it deleted our framebuffer and every later frame
        was noise (seen in benchmarks/render.py). With no context current those deletions do nothing.
        """
        ctx = getattr(self._renderer, "_gl_context", None)
        if ctx is None:
            return
        module = type(ctx).__module__
        if module == "mujoco.egl":
            import mujoco.egl as megl

            egl = megl.EGL
            egl.eglMakeCurrent(megl.EGL_DISPLAY, egl.EGL_NO_SURFACE, egl.EGL_NO_SURFACE, egl.EGL_NO_CONTEXT)
        elif module == "mujoco.glfw":
            import glfw

            glfw.make_context_current(None)
        # OSMesa has no "no context"; it stays current (only matters next to gymnasium's renderer).

    def _check_open(self) -> None:
        if self._renderer is None:
            raise RuntimeError("the renderer is closed")

    def close(self) -> None:
        """Free the GL context now (a context left to the garbage collector at exit prints EGL errors)."""
        r = getattr(self, "_renderer", None)
        if r is not None:
            # Free our GL objects inside our own context: mujoco.Renderer.close frees the context first
            # and then deletes the MjrContext's objects in whatever context is current by then.
            if getattr(r, "_gl_context", None) is not None and getattr(r, "_mjr_context", None) is not None:
                r._gl_context.make_current()
                r._mjr_context.free()
                r._mjr_context = None
            r.close()
            self._renderer = None

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass


def _close_at_exit(renderer: FrameRenderer) -> None:
    """Close every live renderer at exit, before mujoco's own exit hook terminates the EGL display.

    atexit runs hooks last-in first-out and mujoco registers its hook when the first context is made,
    so ours, registered after that, runs first; otherwise renderers garbage-collected after the display
    is gone print EGL errors.
    """
    global _atexit_registered
    _open_renderers.add(renderer)
    if not _atexit_registered:
        atexit.register(_close_all)
        _atexit_registered = True


def _close_all() -> None:
    for renderer in list(_open_renderers):
        renderer.close()
