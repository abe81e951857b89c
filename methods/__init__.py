"""The other methods, each in a file of its own beside DPO (which is dpo.py, at the root):

    next_token.py    pre-training and SFT: next-token prediction on text windows or on the chosen
                     responses
    unlikelihood.py  the paper's Unlikelihood baseline (section 6)
    simpo.py         SimPO (Meng et al. 2024): no reference, length-normalised rewards, a margin
    orpo.py          ORPO (Hong et al. 2024): SFT and an odds-ratio term in one loss, no reference
    kto.py           KTO (Ethayarajh et al. 2024): unpaired desirable and undesirable examples
    reward_model.py  RLHF's reward model (the paper's Eq. 2), the stage DPO removes
    ppo.py           PPO's and RLOO's math (Eq. 3's reinforcement learning), as pure functions
    rlhf.py          the rollouts-and-updates loop of PPO and RLOO on the sentiment task

Nothing on DPO's path imports them (tests/test_readers_path.py); plumbing/commands.py builds each
command's objective from them.
"""
