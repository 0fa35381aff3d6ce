"""Dock widget 'Backbone': load the shipped or a saved backbone, or pretrain / fine-tune one on
the open images or a folder, with a live loss curve; save it as a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image

from .layers import follow_layer_list, image_planes
from .loss_plot import LossPlot
from .session import describe, prefer_backbone_for, session_for, unwrap
from .workers import JobPanel, existing_path, notify_info, safetensors_target, user_action

if TYPE_CHECKING:
    import napari

LAYERS, FOLDER = "open image layers", "folder"
BUILT_IN_TIP = (
    "Networks that come with napari-mdm: 'histology' was pretrained on tissue images; "
    "the 'random' ones are untrained, for comparison"
)


class BackboneWidget(Container):
    """Choose, train and save the backbone every other napari-mdm widget of this viewer uses."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from ..checkpoint import RANDOM_PREFIX

        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.current = Label(value="no backbone loaded yet")
        self.current.native.setWordWrap(True)  # long names and notes must not widen the dock
        self._make_loading_controls()
        self._make_training_controls()
        super().__init__(
            widgets=[
                self.current,
                self.device,
                self.device_note,
                self.shipped,
                self.load_shipped,
                self.checkpoint,
                self.load_file,
                Label(value="— pretrain / fine-tune —"),
                self.preset,
                self.mode,
                self.steps,
                self.batch,
                self.crop,
                self.data,
                self.folder,
                self.fine_tune,
                self.train,
                self.jobs,
                self.save_path,
                self.save,
            ]
        )
        if self.shipped.value.startswith(RANDOM_PREFIX):
            self.current.value = (
                f"the shipped histology backbone is missing from this installation; "
                f"{self.shipped.value} (untrained) is preselected"
            )
        self._connect(viewer)

    def _make_loading_controls(self) -> None:
        """Device and backbone choosers: the shipped networks, the untrained controls, a file."""
        from ..backbone import PRESETS
        from ..checkpoint import RANDOM_PREFIX, default_backbone_name, shipped_backbones
        from ..devices import available_devices

        devices = available_devices()
        built_in = [*shipped_backbones(), *(f"{RANDOM_PREFIX}{preset}" for preset in PRESETS if preset != "paper")]

        self.device = ComboBox(
            choices=["auto", *devices],
            value="auto",
            label="device",
            tooltip="Where the network runs: a GPU (cuda, mps) is much faster than the CPU",
        )
        self.device_note = Label(value=f"available: {', '.join(devices)} (auto = {devices[0]})")
        self.shipped = ComboBox(
            choices=built_in,
            value=default_backbone_name(),
            label="built-in",
            tooltip=BUILT_IN_TIP,
        )
        self._preselected = self.shipped.value
        self.load_shipped = PushButton(text="Load built-in backbone", tooltip="Use the network chosen above")
        self.checkpoint = FileEdit(
            mode="r",
            filter="*.safetensors",
            label="file",
            tooltip="A backbone saved earlier with 'Save checkpoint' (.safetensors)",
        )
        self.load_file = PushButton(text="Load file", tooltip="Use the backbone in the chosen file")

    def _make_training_controls(self) -> None:
        """The pretraining controls, their defaults read from PretrainConfig."""
        from ..backbone import DEFAULT_PRESET, PRESETS
        from ..corruption import MODES, CorruptionConfig
        from ..pretrain import PretrainConfig

        defaults = PretrainConfig()

        self.preset = ComboBox(
            choices=list(PRESETS),
            value=DEFAULT_PRESET,
            label="preset",
            tooltip="Network size: tiny trains in minutes on a CPU; small and paper need a GPU",
        )
        self.mode = ComboBox(
            choices=list(MODES),
            value=CorruptionConfig().mode,
            label="corruption",
            tooltip="How images are hidden during training: mdm masks patches (best for "
            "segmentation), ddpm adds noise, umd and maskdm mix both",
        )
        self.steps = SpinBox(
            value=defaults.steps,
            min=1,
            max=1_000_000,
            label="steps",
            tooltip="Training steps; more steps learn your images better",
        )
        self.batch = SpinBox(
            value=defaults.batch_size,
            min=1,
            max=256,
            label="batch size",
            tooltip="Crops per step; lower it if memory runs out",
        )
        self.crop = SpinBox(
            value=defaults.crop,
            min=16,
            max=1024,
            step=16,
            label="crop",
            tooltip="Side in pixels of the squares cut from the images for training",
        )
        self.data = ComboBox(
            choices=[LAYERS, FOLDER],
            value=LAYERS,
            label="train on",
            tooltip="Learn from the images open in napari, or from every image in a folder",
        )
        self.folder = FileEdit(mode="d", label="folder", tooltip="A folder of images to learn from")
        self.fine_tune = CheckBox(
            value=False,
            text="fine-tune current",
            tooltip="Continue training the backbone in use on your images, keeping its size and "
            "corruption (else start a new network of the chosen preset)",
        )
        self._make_save_controls()

    def _make_save_controls(self) -> None:
        """The train button, the job panel and the save fields."""
        self.train = PushButton(
            text="Pretrain / fine-tune", tooltip="Train the backbone in the background; the curve below shows its loss"
        )
        self.loss_plot = LossPlot()
        self.jobs = JobPanel()
        self.save_path = FileEdit(
            mode="w", filter="*.safetensors", label="save as", tooltip="File to save the backbone in (.safetensors)"
        )
        self.save = PushButton(text="Save checkpoint", enabled=False, tooltip="Save the backbone in use")

    def _connect(self, viewer) -> None:
        layout = self.native.layout()  # the curve goes above the progress bar (a labelled row holds the panel)
        row = self.jobs.native if layout.indexOf(self.jobs.native) >= 0 else self.jobs.native.parentWidget()
        layout.insertWidget(layout.indexOf(row), self.loss_plot)
        self.load_shipped.changed.connect(lambda: self.load(self.shipped.value))
        self.load_file.changed.connect(self._load_file)
        self.train.changed.connect(self.start_training)
        self.fine_tune.changed.connect(self._fine_tune_toggled)
        self.save.changed.connect(self._save)
        self.session.backbone_changed.connect(self._show_backbone)
        self.jobs.progressed.connect(self._plot_loss)
        follow_layer_list(viewer, self)
        if self.session.backbone is not None:
            self._show_backbone(self.session.backbone)
        self.reset_choices()

    def _fine_tune_toggled(self, on: bool) -> None:
        """Fine-tuning keeps the current backbone's preset and corruption: their choosers rest."""
        self.preset.enabled = self.mode.enabled = not on

    def reset_choices(self, *_) -> None:
        """Refresh the choosers; preselect the built-in backbone the open images ask for (the
        face sample: 'faces', or a note that it is not built in), unless the user chose one."""
        super().reset_choices()
        found = prefer_backbone_for(self.session, self.viewer.layers)
        if found is None or self.shipped.value != self._preselected:
            return
        name, note = found
        self.shipped.value = self._preselected = name
        self.shipped.tooltip = f"{BUILT_IN_TIP}. {note[0].upper()}{note[1:]}"
        if self.session.backbone is None:
            self.current.value = note

    def use_backbone(self, backbone) -> None:
        """Make ``backbone`` the viewer's backbone (also the way scripts and tests inject one)."""
        self.session.set_backbone(backbone)

    def _show_backbone(self, backbone) -> None:
        self.current.value = describe(backbone)
        self.save.enabled = True

    def load(self, name_or_path) -> None:
        """Load a built-in name or a checkpoint file in the background."""
        from ..checkpoint import load_backbone
        from ..devices import resolve_device

        device = self.device.value

        def compute(progress, should_stop):
            return load_backbone(name_or_path, device=resolve_device(device))

        self.jobs.start(f"Loading {Path(str(name_or_path)).name}", compute, self.use_backbone)

    @user_action
    def _load_file(self) -> None:
        self.load(existing_path(self.checkpoint, "a checkpoint file (.safetensors)"))

    def _training_images(self) -> Callable[[], object]:
        """A function that gives the training images, run in the worker (it may index a folder)."""
        from ..io import collect_images, normalize_image
        from ..jobs import UserError
        from ..pretrain_images import PretrainImages

        if self.data.value == FOLDER:  # streamed: crops are read from a few open images at a time
            paths = collect_images([existing_path(self.folder, "an image folder to pretrain on", folder=True)])
            return lambda: PretrainImages.from_files(paths)
        layers = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        if not layers:
            raise UserError("open at least one image (or choose a folder) to pretrain on")
        planes = [(plane, layer.name) for layer in layers for plane in image_planes(layer)]
        return lambda: [normalize_image(p, name) for p, name in planes]

    @user_action
    def start_training(self) -> None:
        """Pretrain the chosen preset (or fine-tune the current backbone) in the background."""
        from ..corruption import CorruptionConfig
        from ..jobs import UserError
        from ..pretrain import PretrainConfig, pretrain

        init = self.session.backbone if self.fine_tune.value else None
        if self.fine_tune.value and init is None:
            raise UserError("no backbone to fine-tune: load one first, or untick 'fine-tune'")
        read_images = self._training_images()
        config = PretrainConfig(steps=self.steps.value, batch_size=self.batch.value, crop=self.crop.value)
        corruption = init.corruption if init is not None else CorruptionConfig(mode=self.mode.value)
        preset, device = self.preset.value, self.device.value
        self.loss_plot.clear()

        def compute(progress, should_stop):
            return pretrain(
                read_images(),
                unet=preset,
                corruption=corruption,
                config=config,
                device=device,
                init=init,
                provenance={"source": "napari widget"},
                progress=progress,
                should_stop=should_stop,
            )

        self.jobs.start("Fine-tuning" if init is not None else "Pretraining", compute, self._trained)

    def _plot_loss(self, done: int, total: int, info: str) -> None:
        """Pretraining reports 'loss=0.1234 img/s=... eta=...'; other jobs report no loss."""
        for part in info.split():
            if part.startswith("loss="):
                self.loss_plot.add(float(part[5:]))

    def _trained(self, result) -> None:
        self.use_backbone(result.backbone)
        state = "cancelled" if result.cancelled else "finished"
        notify_info(
            f"{self.jobs.title.lower()} {state} after {result.step} steps; the backbone in use is the one trained so far. "
            "Save it with 'Save checkpoint'"
        )

    @user_action
    def _save(self) -> None:
        from ..checkpoint import load_backbone, save_backbone
        from ..jobs import UserError

        backbone = self.session.backbone
        if backbone is None:
            raise UserError("no backbone to save: load or pretrain one first")
        path = safetensors_target(self.save_path, "checkpoint")

        def compute(progress, should_stop):
            saved = save_backbone(path, backbone.model, backbone.corruption, backbone.provenance)
            return load_backbone(saved, device=backbone.device)

        def done(saved) -> None:
            # from now on the backbone is the file (float16 weights, its digest), so heads trained
            # next name a checkpoint that exists
            self.use_backbone(saved)
            notify_info(f"backbone saved to {saved.name}")

        self.jobs.start("Saving checkpoint", compute, done)
