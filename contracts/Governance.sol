// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Governance
/// @notice Toy governor whose events mirror OpenZeppelin Governor's, so flows written
/// against it read like flows for a real DAO. Weight is 1 unless the owner set a voting power.
contract Governance {
    struct Proposal {
        address proposer;
        uint256 startBlock;
        uint256 endBlock;
        uint256 againstVotes;
        uint256 forVotes;
        uint256 abstainVotes;
    }

    address public owner;
    uint256 public votingPeriod;
    uint256 public proposalCount;
    mapping(uint256 => Proposal) public proposals;
    mapping(uint256 => mapping(address => bool)) public hasVoted;
    mapping(address => uint256) public votingPower;

    event ProposalCreated(
        uint256 indexed proposalId, address indexed proposer, string description, uint256 startBlock, uint256 endBlock
    );
    event VoteCast(address indexed voter, uint256 indexed proposalId, uint8 support, uint256 weight, string reason);

    error NotOwner();
    error UnknownProposal(uint256 proposalId);
    error VotingClosed(uint256 proposalId);
    error AlreadyVoted(uint256 proposalId, address voter);
    error InvalidSupport(uint8 support);

    constructor(uint256 votingPeriod_) {
        owner = msg.sender;
        votingPeriod = votingPeriod_;
    }

    function setVotingPower(address voter, uint256 power) external {
        if (msg.sender != owner) revert NotOwner();
        votingPower[voter] = power;
    }

    function propose(string calldata description) external returns (uint256 proposalId) {
        proposalId = ++proposalCount;
        uint256 startBlock = block.number;
        uint256 endBlock = startBlock + votingPeriod;
        proposals[proposalId] = Proposal(msg.sender, startBlock, endBlock, 0, 0, 0);
        emit ProposalCreated(proposalId, msg.sender, description, startBlock, endBlock);
    }

    /// @param support 0 = against, 1 = for, 2 = abstain (Governor's convention).
    function castVote(uint256 proposalId, uint8 support, string calldata reason) external returns (uint256 weight) {
        Proposal storage p = proposals[proposalId];
        if (p.proposer == address(0)) revert UnknownProposal(proposalId);
        if (block.number > p.endBlock) revert VotingClosed(proposalId);
        if (hasVoted[proposalId][msg.sender]) revert AlreadyVoted(proposalId, msg.sender);
        if (support > 2) revert InvalidSupport(support);
        hasVoted[proposalId][msg.sender] = true;
        weight = votingPower[msg.sender];
        if (weight == 0) weight = 1;
        if (support == 0) p.againstVotes += weight;
        else if (support == 1) p.forVotes += weight;
        else p.abstainVotes += weight;
        emit VoteCast(msg.sender, proposalId, support, weight, reason);
    }
}
