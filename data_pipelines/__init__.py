"""User timelines from MovieLens, Amazon Review and Google Local, streamed by Grain.

    config = default_data_config('movielens', path)   # the config.data section
    prepared = prepare(config)                         # once; cached ArrayRecords
    ds = make_dataset(prepared, 'train', 'next_item', batch_size=16, seed=0)
    it = iter(ds); batch = next(it); state = it.get_state()

See data_pipelines/README.md and docs/contracts.md for formats, tasks and batches.
"""

from data_pipelines._config import default_data_config
from data_pipelines._config import default_data_path
from data_pipelines._io import BadInput
from data_pipelines._io import InputError
from data_pipelines._io import locked
from data_pipelines._io import MissingInput
from data_pipelines._io import ReadLog
from data_pipelines._io import sha256_file
from data_pipelines._pipeline import Example
from data_pipelines._pipeline import item_examples
from data_pipelines._pipeline import make_dataset
from data_pipelines._pipeline import process_rows
from data_pipelines._prepare import Catalogue
from data_pipelines._prepare import prepare
from data_pipelines._prepare import Prepared
from data_pipelines._stats import markdown_table as statistics_table
from data_pipelines._stats import statistics
from data_pipelines._tasks import favourite_genre
from data_pipelines._tasks import STAGE1_TASKS
from data_pipelines._tasks import STAGE2_TASKS
from data_pipelines._timelines import COLUMNS
from data_pipelines._timelines import SPLITS
from data_pipelines._vocab import NUM_RESERVED
from data_pipelines._vocab import OOV_ID
from data_pipelines._vocab import PAD_ID
from data_pipelines._vocab import Vocab
from data_pipelines.tokenizer import ByteTokenizer
from data_pipelines.tokenizer import GemmaTokenizer
from data_pipelines.tokenizer import make_tokenizer
from data_pipelines.tokenizer import Tokenizer
