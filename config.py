"""Editable constants of the four AED scripts: a flag overrides one for a run, editing it here the default."""

############################## SHARED ##############################
# Fixed random seed for dataset split, augmentation and weight init
RANDOM_SEED = 1337

# Folder (relative to the repository) where checkpoints are written and looked up
MODEL_PATH = 'model/'

# Device for the network: 'auto' picks CUDA, then Apple MPS, then CPU
DEVICE = 'auto'

# Classes of recordings without events: never reported or scored as events (a checkpoint's own list wins)
BACKGROUND_CLASSES = ['background']

############################## AED_spec.py ##############################
# Class folders of audio files to turn into spectrograms
SRC_DIR = 'dataset/train/wav/'

# Output folder; one sub-folder of PNGs per class
SPEC_DIR = 'dataset/train/spec/'

# Length of one spectrogram chunk in seconds (one of 2, 3, 5, 10, 30)
SPEC_LENGTH = 3

# Overlap of consecutive chunks in seconds (must be smaller than SPEC_LENGTH)
SPEC_OVERLAP = 2

# Every signal is resampled to this rate before framing
SAMPLE_RATE = 44100

# Resampling method: 'linear' (the original's interpolation) or 'sinc' (torchaudio, higher quality)
RESAMPLE_METHOD = 'linear'

# PNG zlib level: 0 stores pixels uncompressed (128 KB per image, fastest to write and load); 1-9 halve it
PNG_COMPRESSION = 0

# Worker processes for extraction; 0 means one per CPU core
SPEC_WORKERS = 0

############################## AED_train.py ##############################
# Folder of spectrogram images, one sub-folder per class
DATASET_PATH = 'dataset/train/spec/'

# Oversample every class up to this many images (-1 = off)
MIN_SAMPLES_PER_CLASS = -1

# Use at most this many images per class (None = no limit)
MAX_SAMPLES_PER_CLASS = None

# Sort class names alphabetically (False shuffles them with the seed)
SORT_CLASSES_ALPHABETICALLY = True

# Fraction of images held out for validation (0 trains on everything)
VAL_SPLIT = 0.1

# Keep decoded images in RAM after the first epoch
USE_CACHE = False

# Sigmoid outputs and batch augmentation (several targets per image)
MULTI_LABEL = False

# Validation images also get several targets (binary accuracy at 0.5)
VAL_HAS_MULTI_LABEL = False

# Batch augmentation mixes images until this mean number of targets per image
MEAN_TARGETS_PER_IMAGE = 3

# Event images mixed onto background-class images: probability, EBR range (dB), share in part of the window
BACKGROUND_MIX = {'prob': 0.5, 'ebr_db': (-6, 6), 'partial': 0.5}

# Network input size as (width, height)
IM_SIZE = (512, 256)

# Image channels: 1 = grey, 3 = colour
IM_DIM = 1

# Augmentations as {name: [probability, value]}; also available: noise, brightness, crop, flip, mean
IM_AUGMENTATION = {'roll': [0.5, (0.0, 0.05)]}

# Filters of the first convolution; the later blocks use 2x, 4x, 8x and 16x this
FILTERS = 64

# Dropout probability after each dense layer
DROPOUT = 0.5

# Hidden-layer activation: 'relu' (the paper), 'elu' or 'leaky_relu'
NONLINEARITY = 'relu'

# Gain of the He-normal initialisation of hidden layers (sqrt(2))
INIT_GAIN = 2 ** 0.5

# Images per training and evaluation batch
BATCH_SIZE = 32

# Learning rate schedule as {epoch: rate}
LEARNING_RATE = {0: 0.001, 55: 0.000001}

# True interpolates linearly between the epochs above; False switches in steps
LR_DESCENT = True

# L2 penalty on the weights of convolutional and dense layers (0 = off)
L2_WEIGHT = 0

# 'adam' (beta1 = 0.5) or 'nesterov' (momentum 0.9)
OPTIMIZER = 'adam'

# Last epoch to train
EPOCHS = 55

# Shuffle the training set at every epoch
RANDOMIZE_TRAIN_SET = True

# Confusion-matrix plots show at most this many classes
CONFMATRIX_MAX_CLASSES = 20

# Plot confusion-matrix rows as percentages
NORMALIZE_CONFMATRIX = True

# Checkpoint to start from (path, or file name under MODEL_PATH; None = random init)
PRETRAINED_MODEL = None

# Also load the output layer of PRETRAINED_MODEL (False for another class count)
LOAD_OUTPUT_LAYER = True

# Number of the first epoch
EPOCH_START = 1

# Name used in checkpoint, log and plot file names
RUN_NAME = 'Example_Run'

# Epochs after which a snapshot is saved ([-1] = every epoch)
SNAPSHOT_EPOCHS = [10, 20, 30, 40, 50]

# Save the best weights when training is stopped with Ctrl-C
SAVE_AFTER_INTERRUPT = True

# DataLoader worker processes for training (0 loads in the main process)
TRAIN_WORKERS = 2

# Mixed precision on CUDA GPUs (bf16 where the GPU has it natively, else fp16); CPU trains in float32
MIXED_PRECISION = True

# Train with torch.compile (faster steps after a compile at the start; falls back with a warning)
COMPILE = False

# Folder (relative to the repository) for the CSV epoch log and the training-curve plot
LOG_PATH = 'logs/'

# Folder (relative to the repository) for the per-epoch confusion-matrix plots
CONFMATRIX_PATH = 'confmatrix/'

############################## AED_eval.py ##############################
# Test files, one sub-folder per class (the ground truth)
TEST_DIR = 'dataset/test/'

# Checkpoint to evaluate (path, or file name under MODEL_PATH)
TRAINED_MODEL = 'AED_Example_Run_model_best.pt'

# --json reports list no per-file confidence below this (AP ignores it: only MAX_PREDICTIONS cuts)
CONFIDENCE_THRESHOLD = 0.0001

# Keep at most this many ranked predictions per file for AP (a true class ranked lower scores 0)
MAX_PREDICTIONS = 10

# Processes that decode test files while the network predicts (0 = CPU cores - 1)
EVAL_WORKERS = 0

# Evaluation confusion-matrix plot ({model}: checkpoint stem; '' = none), beside a --json/--csv report if any
EVAL_CONFMATRIX = 'confmatrix/eval_{model}.png'

# CPU threads for the network (0 = 1 for small models, else every core)
EVAL_THREADS = 0

# Windows per network batch in AED_eval.py and AED_test.py on a CUDA GPU (not tied to BATCH_SIZE)
INFER_BATCH_SIZE = 256

# The same on a CPU or MPS device: no faster with more, and 256 windows need 2 GB in the first layer alone
INFER_BATCH_SIZE_CPU = 32

# torch.compile the network for AED_eval.py and AED_test.py (20 s or more): pays off on a GPU and long runs
INFER_COMPILE = False

# Segment length in seconds of the segment-based scores of AED_eval.py --annotations
SEGMENT_LENGTH = 1.0

############################## AED_test.py ##############################
# Number of ranked results printed per file
NUM_RESULTS = 5

# Results below this confidence are not printed
MIN_CONFIDENCE = 0.01

# CPU threads for the network (0 = 1 for small models, else every core)
TEST_THREADS = 0

# A class's probability that makes an event: a number, or {'default': t, 'siren': t, ...} (also AED_eval.py)
EVENT_THRESHOLD = 0.5

# Median filter over this many windows (odd; 1 = off) before the threshold
EVENT_SMOOTHING = 1

# Events shorter than this (seconds) are dropped, after merging
EVENT_MIN_LENGTH = 0.0

# Events of one class at most this many seconds apart are merged into one
EVENT_MERGE_GAP = 0.5

# --events table: 'raven' (Raven Pro selection table), 'audacity' (label track), 'csv' or 'json' (lines)
EVENTS_FORMAT = 'raven'
