#!/usr/bin/env python
"""
What a trained model's blocks (NL, DNL, GC) attend to, over the config's first test set
(``nonlocal_det.harness.analysis.attention`` defines the measures):

- **query specificity** of every block (backbone and keypoint head): the mean Jensen-Shannon
  divergence between the attention maps of pairs of queries of one image (or person RoI; at most
  256 queries, evenly spaced), averaged over images: 0 for attention that is the same for every
  query (uniform, a GC block's, or the query-independent maps GCNet reported on COCO), 1 for
  disjoint keys. Beside it, the same for each block at initialisation (the config's model built
  without weights, applied to the trained model's block inputs).
- on ``nonlocal_longrange``, the **lamp mass** of every backbone block: the mean attention of the
  queries inside a shape's ground-truth box on the key cells overlapping the lamp's box, beside
  those cells' share of all keys (uniform); on ``nonlocal_pairs``, the **partner mass**.

    python tools/attention_mass.py --config-file configs/longrange_NL.yaml \
        MODEL.WEIGHTS output/ablation/longrange_NL/seed0/model_final.pth
    python tools/attention_mass.py --config-file configs/quickstart.yaml \
        MODEL.WEIGHTS output/quickstart/model_final.pth --output output/attention.json
"""

import json

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.analysis.attention import attention_report, measure_attention
from nonlocal_det.harness.cli.args import (
    model_argument_parser,
    positive_int,
    tool_config,
    writable_file,
)


def main(argv=None):
    parser = model_argument_parser(__doc__)
    parser.add_argument("--max-images", type=positive_int)
    parser.add_argument("--output", type=writable_file, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    cfg = tool_config(parser, args)
    result = measure_attention(cfg, args.max_images, args.random_weights)
    print(attention_report(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    exit_on_user_error(main)
