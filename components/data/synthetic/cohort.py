"""The demo cohort: axial CT phantoms of vertebrae with MM or OMBT lesions, written as DICOM.

Each patient is one CT series of a few axial slices through a lumbar or thoracic vertebra.
Class-specific lesion traits (MM: many small round punched-out lesions and diffuse osteopenia;
OMBT: few large irregular lesions, sometimes a cortical breach, a sclerotic rim or a paraspinal
mass) are drawn once per patient from ranges that `difficulty` pulls toward each other; at
difficulty 1 both classes share one distribution. Anatomy, scanner and identity do not depend
on the class. Geometry is in millimetres in DICOM patient coordinates (x to the patient's left,
y posterior); the vertebral body centre of each patient sits near x = y = 0.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage
from tqdm import tqdm

from components.config import SyntheticConfig

_HU_MIN, _HU_MAX = -1024.0, 3071.0
_UID_NAMESPACE = uuid.UUID("6f1c6d2e-3b7a-5e42-9d0a-6d79656c6f6d")
_IMPLEMENTATION_UID = "2.25.145279823764210955357325357218383612403"

# Per-patient trait ranges, (MM, OMBT). `difficulty` moves both toward their average.
_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "trabecular_hu": ((110.0, 190.0), (170.0, 250.0)),
    "texture_hu": ((22.0, 36.0), (14.0, 26.0)),
    "lesions_per_slice": ((2.5, 9.0), (1.0, 3.0)),
    "lesion_radius_mm": ((1.6, 4.2), (4.5, 10.5)),
    "irregularity": ((0.0, 0.05), (0.1, 0.28)),
    "edge_mm": ((0.1, 0.4), (0.6, 1.8)),
    "heterogeneity_hu": ((0.0, 4.0), (6.0, 18.0)),
    "posterior_share": ((0.03, 0.12), (0.12, 0.35)),
}
# Per-patient probabilities, (MM, OMBT).
_PROBS: dict[str, tuple[float, float]] = {
    "sclerotic_rim": (0.0, 0.4),
    "cortical_breach": (0.05, 0.5),
    "soft_tissue_mass": (0.05, 0.35),
}

_INSTITUTIONS = (
    ("Synthetic University Hospital", "1 Phantom Way^^Testville^^00001^Nowhere"),
    ("Example Oncology Centre", "77 Placeholder Road^^Sampletown^^00002^Nowhere"),
)
_SURNAMES = ("Doe", "Roe", "Moe", "Poe", "Loe")
_GIVEN = ("Alex", "Sam", "Kim", "Lee", "Max", "Jo")


@dataclass(frozen=True)
class ScannerProfile:
    """One CT scanner of the study: DICOM identity, reconstruction kernel and noise."""

    manufacturer: str
    model: str
    kernel: str
    kvp: float
    thickness_mm: float
    blur_mm: float  # sigma of the Gaussian point-spread of the kernel
    grain_mm: float  # correlation length of the noise; sharp kernels give fine grain
    noise_hu: tuple[float, float]  # per-patient range of the noise standard deviation
    intercept: float
    station: str
    window_center: tuple[float, ...]
    window_width: tuple[float, ...]


SCANNERS: tuple[ScannerProfile, ScannerProfile] = (
    ScannerProfile(
        "Philips",
        "Brilliance 64",
        "B",
        120.0,
        2.0,
        0.9,
        0.8,
        (12.0, 20.0),
        -1024.0,
        "CTB64-01",
        (400.0,),
        (1800.0,),
    ),
    ScannerProfile(
        "SIEMENS",
        "SOMATOM Definition AS+",
        "B70s",
        120.0,
        1.5,
        0.45,
        0.4,
        (24.0, 38.0),
        0.0,
        "CTAWP73421",
        (450.0, 40.0),
        (1500.0, 400.0),
    ),
)


@dataclass(frozen=True)
class PatientTraits:
    """What a patient's slices share: scanner, region, bone and lesion style."""

    scanner: str
    region: str
    noise_hu: float
    trabecular_hu: float
    cortical_hu: float
    texture_hu: float
    lesions_per_slice: float
    lesion_radius_mm: float
    irregularity: float
    edge_mm: float
    heterogeneity_hu: float
    posterior_share: float
    sclerotic_rim: bool
    cortical_breach: bool
    soft_tissue_mass: bool


@dataclass(frozen=True)
class PatientRecord:
    """One synthetic patient as written: where, which class, and the PHI in its files."""

    label: str
    folder: str
    patient_id: str
    patient_name: str
    birth_date: str
    study_date: str
    accession: str
    study_uid: str
    series_uid: str
    n_slices: int
    traits: PatientTraits
    phi: frozenset[str]


@dataclass(frozen=True)
class CohortSummary:
    """What `synthesize_cohort` wrote."""

    out: Path
    classes: tuple[str, str]
    seed: int
    difficulty: float
    patients: tuple[PatientRecord, ...]

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_slices(self) -> int:
        return sum(p.n_slices for p in self.patients)

    @property
    def patients_per_class(self) -> dict[str, int]:
        return {c: sum(p.label == c for p in self.patients) for c in self.classes}

    @property
    def slices_per_class(self) -> dict[str, int]:
        return {c: sum(p.n_slices for p in self.patients if p.label == c) for c in self.classes}

    def phi_strings(self) -> frozenset[str]:
        """Every identifying string written into the files (names, IDs, dates, UIDs, sites).

        Sex and age are written too but are left out: they are not identifiers and are far too
        short to search for.
        """
        return frozenset().union(*(p.phi for p in self.patients))

    def counts(self) -> dict[str, object]:
        """Counts only, no PHI: safe to print or to write as a DVC metric."""
        return {
            "n_patients": self.n_patients,
            "n_slices": self.n_slices,
            "patients_per_class": self.patients_per_class,
            "slices_per_class": self.slices_per_class,
        }


@dataclass(frozen=True)
class _Anatomy:
    """Class-independent geometry of one patient (mm unless named otherwise)."""

    region: str
    size: int
    ps: float
    x_min: float
    y_min: float
    z_start: float
    dz: float
    body_ax: float
    body_ay: float
    body_cy: float
    subcut: float
    wall: float
    vb_a: float
    vb_b: float
    canal_rx: float
    canal_ry: float
    ped_w: float
    ped_l: float
    lam_t: float
    spin_len: float
    tp_len: float
    tp_angle: float
    cortex: float
    rot: float
    rot_rate: float
    scale_rate: float
    drift: tuple[float, float]
    jitter: tuple[tuple[float, float, float], ...]
    vert_height: float
    ped_phase: float
    psoas: tuple[float, float]
    erector: tuple[float, float]
    lung: tuple[float, float]
    aorta_r: float
    aorta_calcified: bool
    fat_hu: float
    muscle_hu: float


@dataclass(frozen=True)
class _Track:
    """A lesion (or soft-tissue mass) through the slab: an ellipsoid with a wavy outline."""

    anchor: str  # "body", "pedicle" or "mass"
    side: float
    u: float
    v: float
    du: float  # drift of (u, v) per mm of z
    dv: float
    z0: float
    half_z: float
    radius: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]
    twist: float  # rotation of the outline per mm of z
    hu: float
    breach: bool


@dataclass(frozen=True)
class _Geom:
    """The vertebra in one slice."""

    cx: float
    cy: float
    rot: float
    a: float
    b: float
    yc: float
    rcx: float
    rcy: float
    px: float
    py: float
    pw: float
    pl: float
    lam_t: float
    spin_len: float
    tp_len: float
    pedicles: bool


def synthesize_cohort(
    cfg: SyntheticConfig, classes: tuple[str, str], out: Path, progress: bool = True
) -> CohortSummary:
    """Write a synthetic CT cohort as `out/<CLASS>/<P0001>/<0001>.dcm`.

    `classes[0]` gets the MM lesion style, `classes[1]` the OMBT style. Files depend only on
    `cfg` and `classes`: reruns give byte-identical files. An existing `out` is replaced once
    the new cohort is complete.

    Args:
        cfg: cohort size, slices per patient, image size, difficulty and seed.
        classes: the two class folder names, MM-like first.
        out: the cohort root.
        progress: show a progress bar over patients.

    Returns:
        What was written, including every PHI string (`phi_strings()`).

    Raises:
        ValueError: `classes` are not two distinct folder names.
        FileExistsError: `out` holds files this function would not have written.
    """
    if len(classes) != 2 or len(set(classes)) != 2 or not all(_safe_name(c) for c in classes):
        raise ValueError(f"classes must be two distinct folder names, got {list(classes)}")
    out = Path(out)
    _check_replaceable(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    n = cfg.patients_per_class
    folders = np.random.default_rng([cfg.seed, 101]).permutation(2 * n) + 1
    records: list[PatientRecord] = []
    seen_ids: set[str] = set()
    try:
        with tqdm(total=2 * n, desc="synthesize", unit="patient", disable=not progress) as bar:
            for j in range(n):
                for c, label in enumerate(classes):
                    folder = f"P{folders[2 * j + c]:04d}"
                    rec = _write_patient(cfg, c, j, label, tmp / label / folder, seen_ids)
                    records.append(rec)
                    bar.update(1)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    records.sort(key=lambda r: (r.label != classes[0], r.folder))
    return CohortSummary(out, (classes[0], classes[1]), cfg.seed, cfg.difficulty, tuple(records))


def _safe_name(name: str) -> bool:
    return bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name


def _check_replaceable(out: Path) -> None:
    """Refuse to delete anything but a previous cohort (.dcm files, three levels deep)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; remove it or choose another out")
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        ok_dir = path.is_dir() and not path.is_symlink() and len(rel.parts) <= 2
        ok_file = path.is_file() and path.suffix == ".dcm" and len(rel.parts) == 3
        if not (ok_dir or ok_file):
            raise FileExistsError(
                f"{out}: holds {rel}, which synthesize did not write; "
                "remove it yourself or choose another out"
            )


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID: 2.25 + a name-based UUID (pydicom ignores entropy for 2.25)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def _digits(n: int, *parts: object) -> str:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return f"{int(h, 16) % 10**n:0{n}d}"


def _lerp_range(name: str, c: int, difficulty: float) -> tuple[float, float]:
    own, other = _RANGES[name][c], _RANGES[name][1 - c]
    lo = own[0] + difficulty * ((own[0] + other[0]) / 2 - own[0])
    hi = own[1] + difficulty * ((own[1] + other[1]) / 2 - own[1])
    return lo, hi


def _lerp_prob(name: str, c: int, difficulty: float) -> float:
    own, other = _PROBS[name][c], _PROBS[name][1 - c]
    return own + difficulty * ((own + other) / 2 - own)


def _balanced_slot(seed: int, c: int, j: int, n: int) -> tuple[int, bool]:
    """Scanner index and lumbar flag of patient j of class c.

    Both are balanced within each class (and crossed with each other), so neither the scanner
    nor the spinal region predicts the class: a model has to look at the lesions.
    """
    slot = int(np.random.default_rng([seed, 202, c]).permutation(n)[j])
    return slot % 2, (slot // 2) % 2 == 0


def _write_patient(
    cfg: SyntheticConfig, c: int, j: int, label: str, folder: Path, seen_ids: set[str]
) -> PatientRecord:
    """Synthesize one patient's slices into `folder`."""
    # Separate streams so that difficulty changes lesions only, never anatomy or identity.
    s_traits, s_anat, s_lesions, s_image, s_ident = np.random.SeedSequence([cfg.seed, c, j]).spawn(
        5
    )
    scanner_index, lumbar = _balanced_slot(cfg.seed, c, j, cfg.patients_per_class)
    scanner = SCANNERS[scanner_index]
    anat_rng = np.random.default_rng(s_anat)
    n_slices = int(anat_rng.integers(cfg.slices_min, cfg.slices_max + 1))
    anat = _sample_anatomy(anat_rng, cfg.size, n_slices, scanner, lumbar)
    traits = _sample_traits(np.random.default_rng(s_traits), c, cfg.difficulty, scanner, anat)
    tracks = _sample_tracks(np.random.default_rng(s_lesions), traits, anat, n_slices)
    ident = _identity(np.random.default_rng(s_ident), cfg.seed, c, j, seen_ids)

    folder.mkdir(parents=True)
    image_rng = np.random.default_rng(s_image)
    series_uid = _uid(cfg.seed, c, j, "series")
    sop_uids = []
    for k in range(n_slices):
        hu = _render(anat, traits, tracks, scanner, k, image_rng)
        stored = np.rint(hu - scanner.intercept).astype(np.int16)
        sop = _uid(cfg.seed, c, j, "sop", k)
        sop_uids.append(sop)
        ds = _dataset(ident, anat, scanner, series_uid, sop, k, stored)
        dcmwrite(folder / f"{k + 1:04d}.dcm", ds, enforce_file_format=True)
    phi = {
        ident["PatientName"],
        ident["PatientID"],
        ident["PatientBirthDate"],
        ident["PatientAddress"],
        ident["InstitutionName"],
        ident["InstitutionAddress"],
        ident["ReferringPhysicianName"],
        ident["AccessionNumber"],
        ident["StudyID"],
        ident["StudyDate"],
        ident["StudyInstanceUID"],
        ident["FrameOfReferenceUID"],
        ident["DeviceSerialNumber"],
        scanner.station,
        series_uid,
        *sop_uids,
    }
    return PatientRecord(
        label=label,
        folder=folder.name,
        patient_id=ident["PatientID"],
        patient_name=ident["PatientName"],
        birth_date=ident["PatientBirthDate"],
        study_date=ident["StudyDate"],
        accession=ident["AccessionNumber"],
        study_uid=ident["StudyInstanceUID"],
        series_uid=series_uid,
        n_slices=n_slices,
        traits=traits,
        phi=frozenset(phi),
    )


def _identity(
    rng: np.random.Generator, seed: int, c: int, j: int, seen_ids: set[str]
) -> dict[str, str]:
    """Fake PHI for one patient; PatientID is unique in the cohort."""
    key = (seed, c, j)
    pid = "MX" + _digits(8, *key, "mrn")
    while pid in seen_ids:  # a collision is astronomically rare, but keep IDs unique
        pid = "MX" + _digits(8, pid)
    seen_ids.add(pid)
    study = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 2922)))
    age = int(rng.integers(42, 86))
    birth = date(study.year - age, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    age -= (study.month, study.day) < (birth.month, birth.day)
    institution, address = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
    suffix = _digits(4, *key, "name")
    tag = "".join(chr(65 + int(x)) for x in rng.integers(0, 26, 3))
    return {
        "PatientName": f"Synthetic^Patient{suffix}^{tag}",
        "PatientID": pid,
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": "MF"[int(rng.integers(2))],
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": f"{int(rng.integers(1, 999))} {tag.title()} Street^^Synthville",
        "InstitutionName": institution,
        "InstitutionAddress": address,
        "ReferringPhysicianName": (
            f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}{tag}^"
            f"{_GIVEN[int(rng.integers(len(_GIVEN)))]}"
        ),
        "AccessionNumber": "AC" + _digits(10, *key, "accession"),
        "StudyID": "S" + _digits(7, *key, "study"),
        "StudyDate": study.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}"
        f"{int(rng.integers(60)):02d}",
        "StudyInstanceUID": _uid(*key, "study"),
        "FrameOfReferenceUID": _uid(*key, "frame"),
        "DeviceSerialNumber": "SN" + _digits(6, *key, "device"),
        "XRayTubeCurrent": str(int(rng.integers(150, 351))),
    }


def _sample_anatomy(
    rng: np.random.Generator, size: int, n_slices: int, scanner: ScannerProfile, lumbar: bool
) -> _Anatomy:
    """Class-independent vertebra, body habitus and field of view."""
    region = "lumbar" if lumbar else "thoracic"
    s = rng.uniform(0.9, 1.1)  # overall patient size
    vb_a = s * (rng.uniform(21, 26) if lumbar else rng.uniform(16, 20))
    vb_b = s * (rng.uniform(15, 19) if lumbar else rng.uniform(14, 17))
    canal_rx = s * (rng.uniform(10, 12) if lumbar else rng.uniform(7.5, 9))
    canal_ry = s * (rng.uniform(7, 9) if lumbar else rng.uniform(7, 8.5))
    lam_t = s * rng.uniform(5, 7)
    spin_len = s * (rng.uniform(22, 30) if lumbar else rng.uniform(14, 22))
    yc = vb_b + 0.75 * canal_ry
    cover = rng.uniform(15, 35)
    y_post = yc + canal_ry + lam_t + spin_len + cover
    body_ay = s * (rng.uniform(100, 125) if lumbar else rng.uniform(105, 125))
    fov = rng.uniform(150, 200)
    ps = round(fov / size, 4)
    margin = rng.uniform(12, 30)
    y_max = y_post + margin
    jitter = tuple(
        (rng.normal(0, 0.5), rng.normal(0, 0.5), rng.normal(0, 0.008)) for _ in range(n_slices)
    )
    return _Anatomy(
        region=region,
        size=size,
        ps=ps,
        x_min=rng.uniform(-10, 10) - size * ps / 2,
        y_min=y_max - size * ps,
        z_start=round(rng.uniform(-420, -150), 1),
        dz=scanner.thickness_mm,
        body_ax=s * rng.uniform(140, 175),
        body_ay=body_ay,
        body_cy=y_post - body_ay,
        subcut=rng.uniform(8, 30),
        wall=rng.uniform(6, 11),
        vb_a=vb_a,
        vb_b=vb_b,
        canal_rx=canal_rx,
        canal_ry=canal_ry,
        ped_w=s * rng.uniform(4, 5.5),
        ped_l=s * rng.uniform(7, 10),
        lam_t=lam_t,
        spin_len=spin_len,
        tp_len=s * (rng.uniform(16, 24) if lumbar else rng.uniform(13, 18)),
        tp_angle=np.deg2rad(rng.uniform(5, 15) if lumbar else rng.uniform(20, 35)),
        cortex=rng.uniform(1.2, 2.2),
        rot=np.deg2rad(rng.normal(0, 4)),
        rot_rate=np.deg2rad(rng.normal(0, 0.4)),
        scale_rate=rng.uniform(-0.006, 0.006),
        drift=(rng.normal(0, 0.15), rng.normal(0, 0.15)),
        jitter=jitter,
        vert_height=rng.uniform(24, 32),
        ped_phase=rng.uniform(0, 2 * np.pi),
        psoas=(s * rng.uniform(8, 14), s * rng.uniform(12, 18)),
        erector=(s * rng.uniform(17, 24), s * rng.uniform(14, 20)),
        lung=(rng.uniform(45, 60), rng.uniform(60, 80)),
        aorta_r=rng.uniform(8, 12),
        aorta_calcified=bool(rng.random() < 0.3),
        fat_hu=rng.uniform(-115, -85),
        muscle_hu=rng.uniform(35, 55),
    )


def _sample_traits(
    rng: np.random.Generator, c: int, difficulty: float, scanner: ScannerProfile, anat: _Anatomy
) -> PatientTraits:
    """Class-specific traits, drawn with fixed uniforms so difficulty morphs the same patient."""
    u = {name: rng.random() for name in _RANGES}
    p = {name: rng.random() for name in _PROBS}
    val = {}
    for name, ui in u.items():
        lo, hi = _lerp_range(name, c, difficulty)
        val[name] = lo + ui * (hi - lo)
    trab = val["trabecular_hu"]
    return PatientTraits(
        scanner=f"{scanner.manufacturer} {scanner.model}",
        region=anat.region,
        noise_hu=rng.uniform(*scanner.noise_hu),
        cortical_hu=float(np.clip(680 + 1.4 * trab + rng.normal(0, 50), 700, 1200)),
        sclerotic_rim=bool(p["sclerotic_rim"] < _lerp_prob("sclerotic_rim", c, difficulty)),
        cortical_breach=bool(p["cortical_breach"] < _lerp_prob("cortical_breach", c, difficulty)),
        soft_tissue_mass=bool(
            p["soft_tissue_mass"] < _lerp_prob("soft_tissue_mass", c, difficulty)
        ),
        **val,
    )


def _outline(
    rng: np.random.Generator, irregularity: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Amplitudes and phases of harmonics 2-6 of a wavy outline; amplitudes sum to irregularity."""
    w = rng.dirichlet(np.ones(5))
    amps = tuple(float(a) for a in irregularity * w)
    phases = tuple(float(x) for x in rng.uniform(0, 2 * np.pi, 5))
    return amps, phases


def _sample_tracks(
    rng: np.random.Generator, t: PatientTraits, anat: _Anatomy, n_slices: int
) -> list[_Track]:
    """Lesions as ellipsoids through the slab, so positions and sizes drift slice to slice."""
    slab = (n_slices - 1) * anat.dz
    half_z_mean = 1.75 * t.lesion_radius_mm
    # Expected lesions cut by one slice (radius >= half its maximum) = lesions_per_slice.
    n_tracks = int(np.ceil(t.lesions_per_slice * (slab + 2 * half_z_mean) / (1.73 * half_z_mean)))
    tracks = [
        _lesion(rng, t, anat, rng.uniform(-half_z_mean, slab + half_z_mean))
        for _ in range(n_tracks)
    ]
    if t.cortical_breach:
        largest = max(range(len(tracks)), key=lambda i: tracks[i].radius)
        tracks[largest] = _lesion(rng, t, anat, tracks[largest].z0, breach=True)
    for k in range(n_slices):  # every slice shows pathology, as in the paper's selection
        if not any(_visible(tr, k * anat.dz) for tr in tracks if tr.anchor == "body"):
            tracks.append(_lesion(rng, t, anat, k * anat.dz, anchor="body"))
    if t.soft_tissue_mass:
        breach = [tr for tr in tracks if tr.breach and tr.anchor == "body"]
        side = np.sign(breach[0].u) if breach and breach[0].u else rng.choice([-1.0, 1.0])
        angle = rng.uniform(0, np.deg2rad(70))  # from lateral toward anterior
        amps, phases = _outline(rng, rng.uniform(0.1, 0.25))
        tracks.append(
            _Track(
                anchor="mass",
                side=float(side),
                u=float(np.cos(angle)),
                v=float(-np.sin(angle)),
                du=0.0,
                dv=0.0,
                z0=slab / 2,
                half_z=10 * slab + 50,  # through the whole slab, shrinking a little at its ends
                radius=rng.uniform(10, 20),
                amps=amps,
                phases=phases,
                twist=rng.normal(0, 0.02),
                hu=rng.uniform(35, 50),
                breach=True,
            )
        )
    return tracks


def _lesion(
    rng: np.random.Generator,
    t: PatientTraits,
    anat: _Anatomy,
    z0: float,
    breach: bool = False,
    anchor: str | None = None,
) -> _Track:
    """One lesion in the style of `t`; body lesions in (u, v) units of the body semi-axes."""
    radius = t.lesion_radius_mm * rng.uniform(0.6, 1.3)
    if anchor is None:
        anchor = "pedicle" if not breach and rng.random() < t.posterior_share else "body"
    side = float(rng.choice([-1.0, 1.0]))
    if breach:
        psi = rng.uniform(-np.pi - 0.3, 0.3)  # anterior or lateral, not into the canal
        rho = rng.uniform(0.8, 1.0)
    else:
        psi = rng.uniform(-np.pi, np.pi)
        rho = np.sqrt(rng.random()) * max(0.0, 1 - (radius + 1.5) / min(anat.vb_a, anat.vb_b))
        if anchor == "pedicle":
            rho = rng.uniform(0, 0.4)
            breach = radius > anat.ped_w + 1  # a large pedicle lesion destroys the pedicle
    amps, phases = _outline(rng, t.irregularity)
    return _Track(
        anchor=anchor,
        side=side,
        u=float(rho * np.cos(psi)),
        v=float(rho * np.sin(psi)),
        du=rng.normal(0, 0.006),
        dv=rng.normal(0, 0.006),
        z0=float(z0),
        half_z=radius * rng.uniform(1.0, 2.5),
        radius=radius,
        amps=amps,
        phases=phases,
        twist=rng.normal(0, 0.04),
        hu=rng.uniform(25, 55),
        breach=breach,
    )


def _radius_at(tr: _Track, z: float) -> float:
    q = 1 - ((z - tr.z0) / tr.half_z) ** 2
    return tr.radius * float(np.sqrt(q)) if q > 0 else 0.0


def _visible(tr: _Track, z: float) -> bool:
    return _radius_at(tr, z) >= 0.5 * tr.radius


def _geometry(anat: _Anatomy, k: int) -> _Geom:
    jx, jy, js = anat.jitter[k]
    s = 1 + anat.scale_rate * k + js
    z = k * anat.dz
    pedicles = np.cos(2 * np.pi * z / anat.vert_height + anat.ped_phase) > -0.4
    rcy = anat.canal_ry * s
    b = anat.vb_b * s
    yc = b + 0.75 * rcy
    return _Geom(
        cx=anat.drift[0] * k + jx,
        cy=anat.drift[1] * k + jy,
        rot=anat.rot + anat.rot_rate * k,
        a=anat.vb_a * s,
        b=b,
        yc=yc,
        rcx=anat.canal_rx * s,
        rcy=rcy,
        px=anat.canal_rx * s + 0.8 * anat.ped_w * s,
        py=yc - 0.3 * rcy,
        pw=anat.ped_w * s,
        pl=anat.ped_l * s,
        lam_t=anat.lam_t * s,
        spin_len=anat.spin_len * s,
        tp_len=anat.tp_len * s,
        pedicles=bool(pedicles),
    )


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0
) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if angle:
        ca, sa = np.cos(angle), np.sin(angle)
        dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
    return (dx / ax) ** 2 + (dy / ay) ** 2 <= 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise with correlation length `sigma_px`."""
    f = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma_px, truncate=3.0
    )
    return f / max(float(f.std()), 1e-6)


def _window(anat: _Anatomy, g: _Geom, cx: float, cy: float, extent: float) -> tuple[slice, slice]:
    """Rows and columns that cover `extent` mm around a point of the vertebra frame."""
    cr, sr = float(np.cos(g.rot)), float(np.sin(g.rot))
    x = g.cx + cr * cx - sr * cy
    y = g.cy + sr * cx + cr * cy

    def span(centre: float, origin: float) -> slice:
        lo = int(np.floor((centre - extent - origin) / anat.ps))
        hi = int(np.ceil((centre + extent - origin) / anat.ps)) + 1
        return slice(min(max(lo, 0), anat.size), min(max(hi, 0), anat.size))

    return span(y, anat.y_min), span(x, anat.x_min)


def _depth(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, tr: _Track, z: float
) -> np.ndarray:
    """Signed distance (mm, positive inside) to a wavy outline of mean radius r."""
    dx, dy = x - cx, y - cy
    theta = np.arctan2(dy, dx)
    wave = np.zeros_like(theta)
    for order, (amp, phase) in enumerate(zip(tr.amps, tr.phases, strict=True), start=2):
        if amp:
            wave += amp * np.cos(order * theta + phase + tr.twist * z)
    return r * (1 + wave) - np.hypot(dx, dy)


def _render(
    anat: _Anatomy,
    t: PatientTraits,
    tracks: list[_Track],
    scanner: ScannerProfile,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One axial slice in HU: anatomy, lesions, kernel blur and scanner noise."""
    n, ps = anat.size, anat.ps
    shape = (n, n)
    coords = (np.arange(n, dtype=np.float32) + 0.5) * ps
    x, y = np.meshgrid(coords + anat.x_min, coords + anat.y_min)
    g = _geometry(anat, k)
    z = k * anat.dz
    coarse = _smooth_noise(rng, shape, 5.0 / ps)
    fine = _smooth_noise(rng, shape, 0.6 / ps)
    cr, sr = float(np.cos(g.rot)), float(np.sin(g.rot))
    xv = cr * (x - g.cx) + sr * (y - g.cy)  # vertebra frame: rotated with the spine
    yv = -sr * (x - g.cx) + cr * (y - g.cy)

    img = np.full(shape, -1000.0, dtype=np.float32) + 5 * fine
    fat = anat.fat_hu + 8 * coarse
    muscle = anat.muscle_hu + 6 * coarse
    body = _ellipse(x, y, 0, anat.body_cy, anat.body_ax, anat.body_ay)
    img[body] = fat[body]
    inset = anat.subcut
    wall = _ellipse(x, y, 0, anat.body_cy, anat.body_ax - inset, anat.body_ay - inset)
    img[wall] = muscle[wall]
    inset += anat.wall
    cavity = _ellipse(x, y, 0, anat.body_cy, anat.body_ax - inset, anat.body_ay - inset)
    img[cavity] = fat[cavity]

    if anat.region == "lumbar":
        vis_ay = 0.45 * anat.body_ay
        viscera = cavity & _ellipse(x, y, 0, -g.b - 30 - vis_ay, 0.8 * anat.body_ax, vis_ay)
        gut = np.where(coarse > 1.1, fat, 30 + 15 * coarse)
        gut = np.where(coarse < -1.7, -850 + 50 * fine, gut)  # bowel gas
        img[viscera] = gut[viscera]
    else:
        la, lb = anat.lung
        for side in (-1, 1):
            lung = cavity & _ellipse(xv, yv, side * (g.a + 6 + la), -0.2 * lb, la, lb)
            img[lung] = (-860 + 25 * coarse + 15 * fine)[lung]
        heart = cavity & _ellipse(xv, yv, -8, -g.b - 50, 50, 42)
        img[heart] = (40 + 5 * coarse)[heart]

    # Vessels and muscles, in the vertebra frame so they follow the spine.
    if anat.region == "lumbar":
        aorta_c = (0.35 * g.a, -g.b - anat.aorta_r - 2)
        ivc = _ellipse(xv, yv, -0.8 * g.a, -g.b - 14, 12, 8)
        img[ivc] = 35
        pa, pb = anat.psoas
        for side in (-1, 1):
            m = _ellipse(xv, yv, side * (g.a + 0.8 * pa), -0.1 * g.b, pa, pb)
            m |= _ellipse(xv, yv, side * (g.rcx + g.lam_t + g.tp_len + 8), g.yc, 12, 8)
            img[m] = muscle[m]
    else:
        aorta_c = (0.9 * g.a, -0.5 * g.b - anat.aorta_r)
    aorta = _ellipse(xv, yv, *aorta_c, anat.aorta_r, anat.aorta_r)
    img[aorta] = 40 + 4 * fine[aorta]
    if anat.aorta_calcified:
        d = np.hypot(xv - aorta_c[0], yv - aorta_c[1])
        calc = (np.abs(d - anat.aorta_r) < 1.0) & (np.sin(3 * np.arctan2(yv, xv)) > 0.6)
        img[calc] = 350
    ea, eb = anat.erector
    for side in (-1, 1):
        m = body & _ellipse(
            xv, yv, side * (g.rcx + g.lam_t + 0.8 * ea), g.yc + g.rcy + 0.6 * eb, ea, eb
        )
        img[m] = muscle[m]

    for tr in tracks:
        if tr.anchor == "mass":
            r = _radius_at(tr, z)
            cx = tr.side * (g.a + 0.5 * r) * tr.u
            cy = (g.b + 0.5 * r) * tr.v
            win = _window(anat, g, cx, cy, r * (1 + sum(tr.amps)) + 1.0)
            m = body[win] & (_depth(xv[win], yv[win], cx, cy, r, tr, z) > 0)
            img[win][m] = (tr.hu + t.heterogeneity_hu * coarse[win])[m]

    canal = _ellipse(xv, yv, 0, g.yc, g.rcx, g.rcy)
    img[canal] = -60
    sac = _ellipse(xv, yv, 0, g.yc, 0.8 * g.rcx, 0.8 * g.rcy)
    img[sac] = 10 + 3 * fine[sac]
    if anat.region == "thoracic":
        cord = _ellipse(xv, yv, 0, g.yc, 0.5 * g.rcx, 0.45 * g.rcy)
        img[cord] = 32

    vb = _ellipse(xv, yv, 0, 0, g.a, g.b)
    # With pedicles the arch closes on the body; without them the foramina stay open.
    arch_from = 0.85 * g.b if g.pedicles else g.py
    post = _ellipse(xv, yv, 0, g.yc, g.rcx + g.lam_t, g.rcy + g.lam_t) & (yv > arch_from)
    post |= _ellipse(
        xv, yv, 0, g.yc + g.rcy + g.lam_t + 0.5 * g.spin_len - 3, 3.5, 0.5 * g.spin_len
    )
    for side in (-1, 1):
        post |= _ellipse(xv, yv, side * (g.rcx + 0.6 * g.lam_t), g.yc + 0.4 * g.rcy, 5.0, 5.0)
        if g.pedicles:
            post |= _ellipse(xv, yv, side * g.px, g.py, g.pw, g.pl)
            ang = side * anat.tp_angle
            tx = side * (g.rcx + g.lam_t + 0.5 * g.tp_len * np.cos(anat.tp_angle))
            ty = g.yc + 0.5 * g.tp_len * np.sin(anat.tp_angle)
            post |= _ellipse(xv, yv, tx, ty, 0.5 * g.tp_len + 2, 3.5, angle=ang)
    bone = (vb | post) & ~_ellipse(xv, yv, 0, g.yc, g.rcx + 0.6, g.rcy + 0.6)
    if anat.region == "thoracic":
        bone |= _ribs(x, y, xv, yv, anat, g)
    # At coarse pixel sizes the shell is still at least one pixel thick.
    cortex = bone & (ndimage.distance_transform_edt(bone) <= max(1.0, anat.cortex / ps))
    marrow = bone & ~cortex
    img[cortex] = (t.cortical_hu + 40 * fine)[cortex]
    img[marrow] = (t.trabecular_hu + t.texture_hu * fine)[marrow]
    post_marrow = marrow & ~vb
    img[post_marrow] += 60

    for tr in tracks:
        r = _radius_at(tr, z)
        if tr.anchor == "mass" or r <= 0:
            continue
        if tr.anchor == "body":
            cx, cy = (tr.u + tr.du * z) * g.a, (tr.v + tr.dv * z) * g.b
        else:
            cx, cy = tr.side * g.px + tr.u * g.pw, g.py + tr.v * g.pl
        win = _window(anat, g, cx, cy, r * (1 + sum(tr.amps)) + 2.0 + t.edge_mm)
        sub, fine_w = img[win], fine[win]  # views: painting sub paints img
        d = _depth(xv[win], yv[win], cx, cy, r, tr, z)
        allowed = np.ones(d.shape, bool) if tr.breach else marrow[win]
        if t.sclerotic_rim:
            rim = np.clip((d + 1.8) / 0.6 + 0.5, 0, 1) * (bone[win] & allowed)
            sub += rim * (750 + 60 * fine_w - sub)
        f = np.clip(d / t.edge_mm + 0.5, 0, 1) * allowed
        sub += f * (tr.hu + t.heterogeneity_hu * fine_w - sub)

    img = ndimage.gaussian_filter(img, scanner.blur_mm / ps)
    img += t.noise_hu * _smooth_noise(rng, shape, scanner.grain_mm / ps)
    return np.clip(img, _HU_MIN, _HU_MAX)


def _ribs(
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    anat: _Anatomy,
    g: _Geom,
) -> np.ndarray:
    """Rib segments along the chest wall and the rib heads beside the vertebral body."""
    ax, ay = anat.body_ax - anat.subcut - anat.wall, anat.body_ay - anat.subcut - anat.wall
    outer = _ellipse(x, y, 0, anat.body_cy, ax + 2, ay + 2)
    inner = _ellipse(x, y, 0, anat.body_cy, ax - 3, ay - 3)
    theta = np.arctan2(y - anat.body_cy, x)
    # Oblique ribs cut by an axial plane: short segments, none at the midline.
    segments = (np.sin(13 * theta + anat.ped_phase) > 0.35) & (np.abs(np.cos(theta)) > 0.4)
    ribs = outer & ~inner & segments
    for side in (-1, 1):
        ribs |= _ellipse(xv, yv, side * (g.a + 4), 0.55 * g.b, 5, 4.5)
    return ribs


def _dataset(
    ident: dict[str, str],
    anat: _Anatomy,
    scanner: ScannerProfile,
    series_uid: str,
    sop_uid: str,
    k: int,
    stored: np.ndarray,
) -> Dataset:
    """One CT Image Storage dataset with its file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MYELOMET_SYN1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for level in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{level}Date", ident["StudyDate"])
        setattr(ds, f"{level}Time", ident["StudyTime"])
    ds.AccessionNumber = ident["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = ident["InstitutionName"]
    ds.InstitutionAddress = ident["InstitutionAddress"]
    ds.ReferringPhysicianName = ident["ReferringPhysicianName"]
    ds.StationName = scanner.station
    part = "LSPINE" if anat.region == "lumbar" else "TSPINE"
    ds.StudyDescription = "CT SPINE WITHOUT CONTRAST"
    ds.SeriesDescription = f"{part} {scanner.thickness_mm:g}mm {scanner.kernel}"
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = ident["PatientName"]
    ds.PatientID = ident["PatientID"]
    ds.PatientBirthDate = ident["PatientBirthDate"]
    ds.PatientSex = ident["PatientSex"]
    ds.PatientAge = ident["PatientAge"]
    ds.PatientAddress = ident["PatientAddress"]
    ds.BodyPartExamined = part
    ds.SliceThickness = scanner.thickness_mm
    ds.KVP = scanner.kvp
    ds.DeviceSerialNumber = ident["DeviceSerialNumber"]
    ds.SoftwareVersions = "SYN 1.0"
    ds.ReconstructionDiameter = round(anat.ps * anat.size, 2)
    ds.XRayTubeCurrent = ident["XRayTubeCurrent"]
    ds.ConvolutionKernel = scanner.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = ident["StudyInstanceUID"]
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ident["StudyID"]
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    z = round(anat.z_start + k * anat.dz, 2)
    ds.ImagePositionPatient = [
        round(anat.x_min + anat.ps / 2, 4),
        round(anat.y_min + anat.ps / 2, 4),
        z,
    ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = ident["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = z
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [anat.ps, anat.ps]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    wc, ww = scanner.window_center, scanner.window_width
    ds.WindowCenter = list(wc) if len(wc) > 1 else wc[0]
    ds.WindowWidth = list(ww) if len(ww) > 1 else ww[0]
    ds.RescaleIntercept = scanner.intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds
