"""The report's sections: what each one runs (a script and its flags) and the two lines a
reader needs beside its figures (what it shows, what to look for).

A section's commands are (script name, argv) pairs; ``visualize_all.py`` maps the names to the
scripts, which it alone imports, and runs them in its process (``model.pipeline.scripts``).
The flags a plan sets (``model.pipeline.planning``: photos, steps, channels) come in with the
:class:`ReportContext`.
"""
from dataclasses import dataclass, field


@dataclass
class Section:
    """One method's part of the report: what to run and the two lines a reader needs."""

    name: str
    title: str
    paper: str
    shows: str
    look_for: str
    commands: object  # function(ReportContext) -> list of (script name, argv)


@dataclass
class ReportContext:
    """What every section is run with.

    Attributes:
        gallery: test indices, misclassified first, then correct.
        layers: the conv layers, in order.
        flags: section name -> the flags its plan sets (``--num-images 8``), for each command.
        smoothing: ``--aug-smooth``, ``--eigen-smooth``: the CAM flags the user gave.
    """

    gallery: list
    layers: list
    flags: dict = field(default_factory=dict)
    smoothing: list = field(default_factory=list)


GALLERY_SIZE = 6  # the test images the per-image sections choose from


def _index_flags(indices):
    return ["--index", *map(str, indices)]


def _occlusion(context):
    # One wrong and one right decision: the map of a mistake shows what misled the net.
    chosen = [context.gallery[0], context.gallery[-1]]
    return [("occlusion_sensitivity", _index_flags(chosen))]


def _cam(context):
    return [("class_activation_maps", _index_flags(context.gallery) + ["--gallery", "0"]
             + context.smoothing + context.flags.get("cam", []))]


def _deconvnet(context):
    return [("deconvnet", _index_flags(context.gallery[-1:]))]


def _max_activation(context):
    return [("max_activation_search", ["--layer", context.layers[-1], "--channels", "0-5",
                                       "--project"] + context.flags.get("max_activation", []))]


def _feature_maps(context):
    return [("feature_maps", _index_flags(context.gallery[-1:])
             + context.flags.get("feature_maps", []))]


def _gradient_ascent(context):
    middle = context.layers[len(context.layers) // 2]
    steps = context.flags.get("gradient_ascent", [])
    return [("gradient_ascent", steps),
            ("gradient_ascent", ["--layer", middle, "--filters", "0-7"] + steps
             + context.flags.get("filter_comparison", []))]


def _evaluation(context):
    return [("evaluate_attributions", context.flags.get("evaluation", []) + context.smoothing)]


SECTIONS = (
    Section("occlusion", "Occlusion sensitivity", "Zeiler & Fergus 2014, sec. 4.2",
            "How the probability of the explained class changes as a patch (a blurred copy of "
            "the image) slides over it, and which class wins at each patch position.",
            "A drop concentrated on the object means the net uses the object; a drop on the "
            "background of a mistake shows what misled it.", _occlusion),
    Section("cam", "Class activation maps (CAM family)",
            "Zhou et al. 2016; Selvaraju et al. 2017; Chattopadhay et al. 2018; Wang et al. "
            "2020 (Score-CAM); Jiang et al. 2021 (LayerCAM) and more",
            "Where in the last conv layer's maps the evidence for the class lies, by each way "
            "of weighting the channels; then one image with every class as the target.",
            "Methods that agree point at the object; a map that barely changes between "
            "classes explains the image, not the decision.", _cam),
    Section("deconvnet", "DeconvNet projections", "Zeiler & Fergus 2014, sec. 2.1, Fig. 2",
            "For each conv layer, the strongest channels of one image, projected back to "
            "pixels through the switches of the max pools, beside the receptive-field crop.",
            "Early layers respond to edges and colours, deeper ones to parts and whole shapes; "
            "the projection shows which pixels made the unit fire.", _deconvnet),
    Section("max_activation", "Top activating test images", "Zeiler & Fergus 2014, Fig. 2",
            "For channels of the last conv layer, the nine test images that excite each most, "
            "cropped to the receptive field of the maximum, beside their projections (the "
            "DeconvNet's; guided backprop where no max pool lies below the layer).",
            "A channel whose nine crops share one pattern has learned that pattern; mixed "
            "crops suggest a unit that answers to several things.", _max_activation),
    Section("feature_maps", "Filters, feature maps, dead filters and training evolution",
            "Zeiler & Fergus 2014, sec. 4 and Fig. 4",
            "The learned weights, every channel's response to one image, how often each "
            "channel fires on test images, and the maps after each training epoch.",
            "Smooth, oriented first-layer filters and few dead channels mean healthy training; "
            "the evolution shows features sharpening as epochs pass.", _feature_maps),
    Section("gradient_ascent", "Class and filter model visualization",
            "Simonyan et al. 2014, sec. 2; Erhan et al. 2009",
            "Images optimized from scratch to maximize a class score (titled with the "
            "probability reached) or a filter's mean activation.",
            "Recognizable parts of the class mean the net learned the object; texture-only "
            "images mean it keys on texture.", _gradient_ascent),
    Section("evaluation", "How far to trust each map",
            "Petsiuk et al. 2018; Zhang et al. 2016; Adebayo et al. 2018",
            "Every attribution method scored on the same test images: deletion / insertion "
            "AUC, pointing game, model randomization, agreement and cost, against a random "
            "map.",
            "Good maps beat the random row on every faithfulness column and decorrelate when "
            "the weights are randomized; a map that stays similar ignores the model.",
            _evaluation),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)
