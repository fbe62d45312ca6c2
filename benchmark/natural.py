"""The natural domain: Stable-Diffusion-class models, the suites in `prompts/`, metrics with hub or local weights.

Defaults are the papers' protocol (50 steps, each method at its release's sampling, SepEn at the release's
finetuning settings); no metrics unless asked, since their weights must be fetched first, except on the `geneval`
suite, which exists for its metric (without its weights the run says what to fetch and keeps the images).
"""

from sae.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

from .domains import NATURAL, Domain, PaperRecipe
from .suites import PROMPTS_DIR

DOMAIN = Domain(
    name=NATURAL,
    title="natural-language suites (Stable-Diffusion-class models)",
    suites_dir=PROMPTS_DIR,
    run_defaults={"methods": "plain", "num_seeds": 4, "steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE,
                  "metrics": "", "processes": 1},
    release_sampling=True,
    paper=PaperRecipe(main_suite="ae276", published=True),
    suite_defaults={"geneval": {"metrics": "geneval"}},
    suite_descriptions={
        "single_object": "one object (animal, object, coloured object): the base model's floor",
        "two_object": "two objects: animal-animal, animal-object, object-object, objects sometimes coloured",
        "multi_object": "three and four objects",
        "ae276": "Attend-and-Excite's 276 prompts in 3 categories (the paper's main table)",
        "sepen_large": "SepEn's 200 large-scale test prompts: seen-seen, seen-unseen, unseen-unseen",
        "polysemy": "pairs where one word has two senses (mouse, bat, crane, seal, ...); presence asks for the sense",
        "geneval": "GenEval's 553 prompts in its six tasks (scored by the `geneval` metric; GenEval makes 4 images "
                   "a prompt)",
        "ci": "two prompts of every category of every suite, for regression checks",
    },
)
