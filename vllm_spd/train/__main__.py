"""``python -m vllm_spd.train``: train an SPD draft head (see ``vllm_spd.train.trainer``)."""

from vllm_spd.train.trainer import main

if __name__ == "__main__":
    main()
